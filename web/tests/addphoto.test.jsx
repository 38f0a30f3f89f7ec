import { fireEvent, render, screen, waitFor } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";

import { createApi } from "../src/api.js";
import AddPhotoPanel from "../src/components/AddPhotoPanel.jsx";

describe("AddPhotoPanel", () => {
  it("sends the photo with the dial's hint, or without one when unticked", async () => {
    const addPhoto = vi.fn().mockResolvedValue({});
    render(<AddPhotoPanel addPhoto={addPhoto} />);
    const button = screen.getByRole("button", { name: "Add photo" });
    expect(button.disabled).toBe(true); // no file yet
    const file = new File([new Uint8Array([137, 80, 78, 71])], "back.png", { type: "image/png" });
    fireEvent.change(screen.getByLabelText("Extra photo"), { target: { files: [file] } });
    fireEvent.change(screen.getByLabelText("Azimuth"), { target: { value: "150" } });
    fireEvent.click(button);
    await waitFor(() => expect(addPhoto).toHaveBeenCalledWith(file, { azimuthDeg: 150, elevationDeg: 0 }));

    fireEvent.change(screen.getByLabelText("Extra photo"), { target: { files: [file] } });
    fireEvent.click(screen.getByRole("checkbox"));
    fireEvent.click(screen.getByRole("button", { name: "Add photo" }));
    await waitFor(() => expect(addPhoto).toHaveBeenLastCalledWith(file, { azimuthDeg: null, elevationDeg: null }));
  });

  it("shows the gateway's refusal", async () => {
    const addPhoto = vi.fn().mockRejectedValue(new Error("extra photo refused"));
    render(<AddPhotoPanel addPhoto={addPhoto} />);
    const file = new File([new Uint8Array([1])], "x.png", { type: "image/png" });
    fireEvent.change(screen.getByLabelText("Extra photo"), { target: { files: [file] } });
    fireEvent.click(screen.getByRole("button", { name: "Add photo" }));
    expect((await screen.findByRole("alert")).textContent).toBe("extra photo refused");
  });
});

describe("api.addPhoto", () => {
  it("posts a multipart form to /jobs/{id}/photos", async () => {
    const fetch = vi.fn().mockResolvedValue(new Response(JSON.stringify({ id: "abc" }), {
      status: 202, headers: { "content-type": "application/json" } }));
    const api = createApi({ base: "/api/v1", fetch });
    const file = new File([new Uint8Array([1])], "side.png", { type: "image/png" });
    await api.addPhoto("abc", file, { azimuthDeg: 90, elevationDeg: 10 });
    const [url, init] = fetch.mock.calls[0];
    expect(url).toBe("/api/v1/jobs/abc/photos");
    expect(init.method).toBe("POST");
    expect(init.body.get("azimuth_deg")).toBe("90");
    expect(init.body.get("elevation_deg")).toBe("10");
    expect(init.body.get("photo").name).toBe("side.png");
  });
});
