import { fireEvent, render, screen, waitFor } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";

import { ApiError } from "../src/api.js";
import UploadPanel from "../src/components/UploadPanel.jsx";
import { MAX_PHOTO_BYTES, sniffImageType, validateOptions, validatePhoto } from "../src/upload.js";
import { JPEG_BYTES, PNG_BYTES, pngFile, WEBP_BYTES } from "./helpers.js";

function withSize(file, size) {
  Object.defineProperty(file, "size", { value: size });
  return file;
}

describe("validatePhoto", () => {
  it("accepts PNG, JPEG and WebP photos", async () => {
    expect(await validatePhoto(pngFile())).toBeNull();
    expect(await validatePhoto(new File([WEBP_BYTES], "leaf.webp", { type: "image/webp" }))).toBeNull();
    expect(await validatePhoto(new File([JPEG_BYTES], "cat.JPG", { type: "" }))).toBeNull();
  });

  it("names the file and its type when it is not a photo", async () => {
    const file = new File(["hello"], "notes.txt", { type: "text/plain" });
    expect(await validatePhoto(file)).toBe("notes.txt (text/plain) is not a PNG, JPEG or WebP photo.");
    const gif = new File(["GIF89a"], "anim.gif", { type: "image/gif" });
    expect(await validatePhoto(gif)).toBe("anim.gif (image/gif) is not a PNG, JPEG or WebP photo.");
  });

  it("rejects empty and oversized files with their sizes", async () => {
    expect(await validatePhoto(new File([], "empty.png", { type: "image/png" }))).toBe("empty.png is empty.");
    const big = withSize(pngFile("huge.png"), MAX_PHOTO_BYTES + 1);
    expect(await validatePhoto(big)).toBe("huge.png is 33554433 bytes; the limit is 33554432 bytes (32.0 MiB).");
    const bigger = withSize(pngFile("huger.png"), 50 * 1024 * 1024);
    expect(await validatePhoto(bigger)).toBe("huger.png is 50.0 MiB; the limit is 32.0 MiB.");
    expect(await validatePhoto(withSize(pngFile("edge.png"), MAX_PHOTO_BYTES))).toBeNull();
  });

  it("looks at the content, not only the name", async () => {
    const fake = new File(["this is text"], "photo.png", { type: "image/png" });
    expect(await validatePhoto(fake)).toBe("photo.png does not contain PNG, JPEG or WebP data.");
  });

  it("sniffs the magic bytes", () => {
    expect(sniffImageType(PNG_BYTES)).toBe("png");
    expect(sniffImageType(JPEG_BYTES)).toBe("jpeg");
    expect(sniffImageType(WEBP_BYTES)).toBe("webp");
    expect(sniffImageType(new TextEncoder().encode("RIFF\x10\x00\x00\x00WAVE"))).toBeNull();
    expect(sniffImageType(new Uint8Array([0x47, 0x49, 0x46]))).toBeNull();
    expect(sniffImageType(new Uint8Array([]))).toBeNull();
  });
});

describe("validateOptions", () => {
  it("accepts the defaults and values in range", () => {
    expect(validateOptions({})).toBeNull();
    expect(validateOptions({ displayName: "chair", novelViews: 16, seed: "18446744073709551615" })).toBeNull();
  });

  it("names the bad option", () => {
    expect(validateOptions({ novelViews: 17 })?.field).toBe("novel_views");
    expect(validateOptions({ novelViews: 1.5 })?.field).toBe("novel_views");
    expect(validateOptions({ novelViews: -1 })?.field).toBe("novel_views");
    expect(validateOptions({ seed: "abc" })?.field).toBe("seed");
    expect(validateOptions({ seed: "-3" })?.field).toBe("seed");
    expect(validateOptions({ seed: "18446744073709551616" })?.field).toBe("seed");
    expect(validateOptions({ displayName: "x".repeat(201) })).toEqual({
      field: "display_name",
      message: "The name has 201 characters; the limit is 200.",
    });
  });
});

describe("UploadPanel", () => {
  function setup(createJob = vi.fn(async () => ({ id: "j1" }))) {
    render(<UploadPanel createJob={createJob} />);
    return { createJob, zone: screen.getByTestId("dropzone"), submit: screen.getByRole("button", { name: "Generate 3D" }) };
  }

  it("shows why a dropped file is refused and keeps Generate disabled", async () => {
    const { zone, submit, createJob } = setup();
    fireEvent.drop(zone, { dataTransfer: { files: [new File(["hi"], "notes.txt", { type: "text/plain" })] } });
    expect((await screen.findByRole("alert")).textContent).toBe("notes.txt (text/plain) is not a PNG, JPEG or WebP photo.");
    expect(submit.disabled).toBe(true);
    expect(createJob).not.toHaveBeenCalled();
  });

  it("refuses several files at once", async () => {
    const { zone } = setup();
    fireEvent.drop(zone, { dataTransfer: { files: [pngFile("a.png"), pngFile("b.png")] } });
    expect((await screen.findByRole("alert")).textContent).toBe("Drop one photo at a time (got 2 files).");
  });

  it("uploads a dropped photo with the options", async () => {
    const { zone, submit, createJob } = setup();
    fireEvent.drop(zone, { dataTransfer: { files: [pngFile("sample.png")] } });
    await screen.findByText(/sample\.png · 12 B/);
    fireEvent.change(screen.getByLabelText("Novel views"), { target: { value: "2" } });
    fireEvent.change(screen.getByLabelText("Seed"), { target: { value: "5" } });
    expect(submit.disabled).toBe(false);
    fireEvent.click(submit);
    await waitFor(() => expect(createJob).toHaveBeenCalledTimes(1));
    const [file, options] = createJob.mock.calls[0];
    expect(file.name).toBe("sample.png");
    expect(options).toEqual({ displayName: "sample", novelViews: 2, seed: "5" });
    expect(screen.queryByRole("alert")).toBeNull();
  });

  it("names the job after the latest photo unless a name was typed", async () => {
    const { zone } = setup();
    const name = screen.getByLabelText("Name");
    fireEvent.drop(zone, { dataTransfer: { files: [pngFile("first.png")] } });
    await waitFor(() => expect(name.value).toBe("first"));
    fireEvent.drop(zone, { dataTransfer: { files: [pngFile("second.png")] } });
    await waitFor(() => expect(name.value).toBe("second"));
    fireEvent.change(name, { target: { value: "my chair" } });
    fireEvent.drop(zone, { dataTransfer: { files: [pngFile("third.png")] } });
    await screen.findByText(/third\.png/);
    expect(name.value).toBe("my chair");
  });

  it("takes a photo from the file picker", async () => {
    const { createJob } = setup();
    fireEvent.change(screen.getByTestId("file-input"), { target: { files: [pngFile("picked.png")] } });
    await screen.findByText(/picked\.png/);
    fireEvent.click(screen.getByRole("button", { name: "Generate 3D" }));
    await waitFor(() => expect(createJob).toHaveBeenCalledTimes(1));
    expect(createJob.mock.calls[0][0].name).toBe("picked.png");
  });

  it("does not send options out of range", async () => {
    const { zone, createJob } = setup();
    fireEvent.drop(zone, { dataTransfer: { files: [pngFile()] } });
    await screen.findByText(/sample\.png/);
    fireEvent.change(screen.getByLabelText("Novel views"), { target: { value: "40" } });
    fireEvent.click(screen.getByRole("button", { name: "Generate 3D" }));
    expect((await screen.findByRole("alert")).textContent).toBe("Novel views must be a whole number from 0 to 16.");
    expect(createJob).not.toHaveBeenCalled();
  });

  it("shows the gateway's message when it refuses the upload", async () => {
    const createJob = vi.fn(async () => {
      throw new ApiError("photo: cannot decode the image (truncated PNG)", { status: 400, code: "INVALID_ARGUMENT" });
    });
    const { zone } = setup(createJob);
    fireEvent.drop(zone, { dataTransfer: { files: [pngFile()] } });
    await screen.findByText(/sample\.png/);
    fireEvent.click(screen.getByRole("button", { name: "Generate 3D" }));
    expect((await screen.findByRole("alert")).textContent).toBe("photo: cannot decode the image (truncated PNG)");
    expect(screen.getByRole("button", { name: "Generate 3D" }).disabled).toBe(false);
  });
});

describe("matte editor", () => {
  const matte = (overrides = {}) => ({
    mask: "data:image/png;base64,AAAA", width: 4, height: 3, coverage: 0.42, border_fraction: 0.1,
    fragments: 1, warning: "", ...overrides,
  });

  function setup(previewMatte) {
    const createJob = vi.fn(async () => ({ id: "j1" }));
    globalThis.URL.createObjectURL = vi.fn(() => "blob:photo");
    globalThis.URL.revokeObjectURL = vi.fn();
    render(<UploadPanel createJob={createJob} previewMatte={previewMatte} />);
    return { createJob, input: screen.getByTestId("file-input") };
  }

  function clickAt(element, x, y) {
    element.getBoundingClientRect = () => ({ left: 10, top: 20, width: 200, height: 100, right: 210, bottom: 120 });
    fireEvent.click(element, { clientX: x, clientY: y });
  }

  it("shows the matte, adds keep and remove points where the user clicks, and sends them with the job", async () => {
    const previewMatte = vi.fn(async () => matte());
    const { createJob, input } = setup(previewMatte);
    fireEvent.change(input, { target: { files: [pngFile("cup.png")] } });
    await waitFor(() => expect(previewMatte).toHaveBeenCalledWith(expect.any(File), []));
    await waitFor(() => expect(screen.getByTestId("matte-status").textContent).toBe("Object: 42% of the photo"));
    clickAt(screen.getByTestId("matte-stage"), 60, 45); // (50 / 200, 25 / 100)
    await waitFor(() => expect(previewMatte).toHaveBeenLastCalledWith(expect.any(File), [[0.25, 0.25, true]]));
    fireEvent.click(screen.getByLabelText(/Remove/));
    clickAt(screen.getByTestId("matte-stage"), 190, 110);
    const both = [[0.25, 0.25, true], [0.9, 0.9, false]];
    await waitFor(() => expect(previewMatte).toHaveBeenLastCalledWith(expect.any(File), both));
    expect(screen.getAllByTestId("matte-point")).toHaveLength(2);
    fireEvent.click(screen.getByRole("button", { name: "Generate 3D" }));
    await waitFor(() => expect(createJob).toHaveBeenCalledTimes(1));
    expect(createJob.mock.calls[0][1].mattePoints).toEqual(both);
    fireEvent.click(screen.getByRole("button", { name: "Undo point" }));
    await waitFor(() => expect(previewMatte).toHaveBeenLastCalledWith(expect.any(File), [[0.25, 0.25, true]]));
  });

  it("asks for one preview when the user clicks several times quickly", async () => {
    const previewMatte = vi.fn(async () => matte());
    const { input } = setup(previewMatte);
    fireEvent.change(input, { target: { files: [pngFile("cup.png")] } });
    await waitFor(() => expect(previewMatte).toHaveBeenCalledTimes(1));
    for (const x of [30, 60, 90]) clickAt(screen.getByTestId("matte-stage"), x, 45);
    await waitFor(() => expect(previewMatte).toHaveBeenCalledTimes(2));
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(previewMatte).toHaveBeenCalledTimes(2);
    expect(previewMatte.mock.calls[1][1]).toHaveLength(3);
  });

  it("shows the gateway's warning about an implausible matte", async () => {
    const previewMatte = vi.fn(async () => matte({ warning: "it touches most of the photo's border." }));
    const { input } = setup(previewMatte);
    fireEvent.change(input, { target: { files: [pngFile("room.png")] } });
    await waitFor(() => expect(screen.getByTestId("matte-warning").textContent).toContain("touches most of the photo"));
  });
});
