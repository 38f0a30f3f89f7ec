// End-to-end run of the workspace in headless Chromium against a running gateway (its HTTP facade
// serving the built workspace): refuse a bad upload, upload a photo by drag and drop, follow the live
// progress until the splat shows, check the canvas really shows the object, orbit, enhance that view,
// wait for the new version and its metrics, compare it with the first one, download a .ply.
//
//   node e2e/workspace.e2e.mjs --url http://127.0.0.1:8080 --photo ../assets/sample.png --out ../out/test-artifacts/web
//
// Screenshots, the downloaded .ply and result.json (what was seen, for tests/test_web.py to check
// further) go to --out. Exit status 0 when every check passed; a failed check prints why and exits 1,
// leaving a screenshot of the page as it was (failure.png).
//
// Chromium is the system's (/usr/bin/chromium, or CHROMIUM), started by playwright-core with a fresh
// profile; WebGL runs on SwiftShader, so no GPU is needed.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";

import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    photo: { type: "string" },
    out: { type: "string" },
    chromium: { type: "string", default: process.env.CHROMIUM || "/usr/bin/chromium" },
    timeout: { type: "string", default: "240" },
  },
});
for (const name of ["url", "photo", "out"]) {
  if (!args[name]) {
    console.error(`usage: node e2e/workspace.e2e.mjs --url URL --photo PNG --out DIR (missing --${name})`);
    process.exit(2);
  }
}
const OUT = path.resolve(args.out);
const JOB_TIMEOUT_MS = Number(args.timeout) * 1000;
const SETTLE_MS = 30000;
fs.mkdirSync(OUT, { recursive: true });

const t0 = Date.now();
function log(message) {
  console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${message}`);
}

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  // WebGL 2 on the CPU.
  "--use-angle=swiftshader",
  "--enable-unsafe-swiftshader",
];

/** Drops files on the drop zone the way a browser does: a drop event whose DataTransfer holds them. */
async function dropFiles(page, files) {
  const payload = files.map((f) => ({ name: f.name, type: f.type, base64: Buffer.from(f.bytes).toString("base64") }));
  await page.evaluate((items) => {
    const transfer = new DataTransfer();
    for (const item of items) {
      const bytes = Uint8Array.from(atob(item.base64), (c) => c.charCodeAt(0));
      transfer.items.add(new File([bytes], item.name, { type: item.type }));
    }
    const zone = document.querySelector('[data-testid="dropzone"]');
    for (const type of ["dragenter", "dragover", "drop"]) {
      zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }
  }, payload);
}

async function alertText(page) {
  const alert = page.getByRole("alert").first();
  await alert.waitFor({ timeout: 15000 });
  return (await alert.textContent()).trim();
}

/**
 * Pixel statistics of the main viewer canvas (its drawing buffer is preserved): the background is the
 * median of the four corner pixels; "object" pixels differ from it by more than 40 in R+G+B. Reports
 * the object fraction inside a central disk (a fifth of the height in radius: well inside the object in
 * the default view), along the border (background only), and the object's bounding box.
 */
async function canvasStats(page) {
  return page.evaluate(() => {
    const canvas = document.querySelector('[data-testid="viewer"] canvas');
    const w = canvas.width;
    const h = canvas.height;
    const copy = document.createElement("canvas");
    copy.width = w;
    copy.height = h;
    const ctx = copy.getContext("2d");
    ctx.drawImage(canvas, 0, 0);
    const data = ctx.getImageData(0, 0, w, h).data;
    const px = (x, y) => {
      const i = 4 * (y * w + x);
      return [data[i], data[i + 1], data[i + 2]];
    };
    const corners = [px(2, 2), px(w - 3, 2), px(2, h - 3), px(w - 3, h - 3)];
    const bg = [0, 1, 2].map((c) => corners.map((p) => p[c]).sort((a, b) => a - b)[1]);
    const differs = (p) => Math.abs(p[0] - bg[0]) + Math.abs(p[1] - bg[1]) + Math.abs(p[2] - bg[2]) > 40;
    let inner = 0;
    let innerHits = 0;
    let border = 0;
    let borderHits = 0;
    const box = [w, h, -1, -1];
    const r = 0.2 * h;
    for (let y = 0; y < h; y += 2) {
      for (let x = 0; x < w; x += 2) {
        const dx = x - w / 2;
        const dy = y - h / 2;
        if (differs(px(x, y))) {
          box[0] = Math.min(box[0], x);
          box[1] = Math.min(box[1], y);
          box[2] = Math.max(box[2], x);
          box[3] = Math.max(box[3], y);
        }
        if (dx * dx + dy * dy < r * r) {
          inner += 1;
          if (differs(px(x, y))) innerHits += 1;
        } else if (x < 0.04 * w || x > 0.96 * w || y < 0.04 * h || y > 0.96 * h) {
          border += 1;
          if (differs(px(x, y))) borderHits += 1;
        }
      }
    }
    return {
      width: w,
      height: h,
      background: bg,
      center: px(Math.floor(w / 2), Math.floor(h / 2)),
      inner_object_fraction: innerHits / inner,
      border_object_fraction: borderHits / border,
      object_box: box,
    };
  });
}

async function viewerReady(page, version) {
  await page.waitForSelector(`[data-testid="viewer"][data-status="ready"][data-version="${version}"]`, {
    timeout: JOB_TIMEOUT_MS,
  });
  // Spark sorts for the viewpoint in a worker; wait until the on-demand renderer has drawn the sorted frame.
  await settled(page);
}

/** A digest of every canvas's pixels (the viewers preserve their drawing buffers). */
async function canvasDigest(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll("canvas")]
      .map((canvas) => {
        const copy = document.createElement("canvas");
        copy.width = canvas.width;
        copy.height = canvas.height;
        const ctx = copy.getContext("2d");
        ctx.drawImage(canvas, 0, 0);
        const data = ctx.getImageData(0, 0, copy.width, copy.height).data;
        let hash = 2166136261;
        for (let i = 0; i < data.length; i += 1) hash = Math.imul(hash ^ data[i], 16777619);
        return `${copy.width}x${copy.height}:${hash >>> 0}`;
      })
      .join(","),
  );
}

/**
 * Waits until the page's canvases stop changing: at least 1.5 s, then until two reads 0.5 s apart
 * agree (on a busy machine the sort worker and SwiftShader can take much longer than a fixed pause).
 * Gives up after SETTLE_MS and goes on; the pixel checks then say what was on screen.
 */
async function settled(page) {
  await page.waitForTimeout(1500);
  const deadline = Date.now() + SETTLE_MS;
  let last = await canvasDigest(page);
  while (Date.now() < deadline) {
    await page.waitForTimeout(500);
    const now = await canvasDigest(page);
    if (now === last) return;
    last = now;
  }
  log(`the canvases were still changing after ${SETTLE_MS / 1000} s`);
}

async function metricsShown(page) {
  return page.$$eval('[data-testid="metrics"] .metric', (rows) =>
    Object.fromEntries(rows.map((r) => [r.getAttribute("data-metric"), r.querySelector("dd").textContent])),
  );
}

async function run(page, result) {
  const requests = [];
  page.on("request", (request) => {
    if (request.method() === "POST" && request.url().includes("/api/v1/jobs")) {
      requests.push({ url: request.url(), body: request.postData() });
    }
  });

  await page.goto(args.url, { waitUntil: "load" });
  await page.getByText("Drop a photo here").waitFor();
  log("workspace loaded");

  // A file that is not a photo is refused before any upload.
  await dropFiles(page, [{ name: "notes.txt", type: "text/plain", bytes: Buffer.from("not a photo") }]);
  result.client_rejection = await alertText(page);
  check(result.client_rejection === "notes.txt (text/plain) is not a PNG, JPEG or WebP photo.", result.client_rejection);
  check(requests.length === 0, "a refused file must not be uploaded");

  // A file that looks like a PNG but is not one passes the local check; the gateway's 4xx message shows.
  const broken = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(64, 7)]);
  await dropFiles(page, [{ name: "broken.png", type: "image/png", bytes: broken }]);
  await page.getByText(/broken\.png · 72 B/).waitFor();
  const refused = page.waitForResponse((r) => r.url().endsWith("/api/v1/jobs") && r.request().method() === "POST");
  await page.getByRole("button", { name: "Generate 3D" }).click();
  const refusedResponse = await refused;
  const refusedBody = await refusedResponse.json();
  result.server_rejection = { status: refusedResponse.status(), error: refusedBody.error, shown: await alertText(page) };
  check(refusedResponse.status() >= 400 && refusedResponse.status() < 500, `broken photo got HTTP ${refusedResponse.status()}`);
  check(result.server_rejection.shown === refusedBody.error.message, "the gateway's message is shown as it is");
  log(`refusals shown: "${result.client_rejection}" / "${result.server_rejection.shown}"`);

  // The real photo, dropped on the zone.
  const photo = fs.readFileSync(args.photo);
  await dropFiles(page, [{ name: path.basename(args.photo), type: "image/png", bytes: photo }]);
  // The drop zone already shows broken.png's preview: wait for this photo's name, then for its own
  // matte preview ("Object: N % of the photo"); by then the earlier refusals must be gone.
  const photoName = path.basename(args.photo).replace(/[.]/g, "\\.");
  await page.getByText(new RegExp(`${photoName} · `)).waitFor();
  const matteShown = await page
    .waitForFunction(() => /^Object:/.test(document.querySelector("[data-testid=matte-status]")?.textContent ?? ""), null, {
      timeout: 30000,
    })
    .then(() => true, () => false);
  const alerts = await page.getByRole("alert").count();
  check(matteShown && alerts === 0, `a good photo shows its matte and no error (${alerts ? await alertText(page) : "no matte"})`);
  result.matte_status = await page.getByTestId("matte-status").textContent();
  log(`matte preview: ${result.matte_status}`);
  await page.getByRole("button", { name: "Generate 3D" }).click();
  await page.waitForFunction(() => /^#\/jobs\/[A-Za-z0-9_-]+$/.test(window.location.hash), null, { timeout: 30000 });
  result.job_id = (await page.evaluate(() => window.location.hash)).replace("#/jobs/", "");
  log(`job ${result.job_id} created`);

  const progressSeen = new Set();
  const watchProgress = setInterval(async () => {
    try {
      progressSeen.add((await page.getByTestId("progress-now").textContent({ timeout: 500 })).trim());
    } catch {
      // the panel re-renders; the next poll reads it
    }
  }, 250);
  await viewerReady(page, 1);
  clearInterval(watchProgress);
  result.progress_seen = [...progressSeen];
  result.timeline = await page.$$eval(".timeline li", (items) =>
    items.map((li) => ({ stage: li.getAttribute("data-stage"), status: li.className.replace("step step-", "") })),
  );
  result.state_v1 = (await page.getByTestId("job-state").textContent()).trim();
  check(result.timeline.some((s) => s.stage === "reconstruct" && s.status === "done"), "the reconstruct stage shows done");
  check(result.state_v1 === "Ready", `state after version 1: ${result.state_v1}`);
  log(`version 1 on screen (${await page.getByTestId("viewer").getAttribute("data-gaussians")} Gaussians)`);

  const canvas = page.locator('[data-testid="viewer"] canvas');
  await canvas.screenshot({ path: path.join(OUT, "initial-view.png") });
  result.initial_stats = await canvasStats(page);
  log(`canvas checked: ${JSON.stringify(result.initial_stats)}`);
  const stats = result.initial_stats;
  check(stats.inner_object_fraction > 0.95, `object pixels in the centre: ${stats.inner_object_fraction}`);
  check(stats.border_object_fraction < 0.01, `object pixels on the border: ${stats.border_object_fraction}`);
  const [x0, y0, x1, y1] = stats.object_box;
  const off = [Math.abs((x0 + x1) / 2 - stats.width / 2) / stats.width, Math.abs((y0 + y1) / 2 - stats.height / 2) / stats.height];
  check(off[0] < 0.05 && off[1] < 0.05, `the object is centred (box ${stats.object_box})`);
  check(y1 - y0 > 0.3 * stats.height, `the object fills the view (box ${stats.object_box})`);

  // Orbit: drag to the left turns the camera towards +x, then upwards a little. Few pointer moves: on
  // SwiftShader each one waits for a frame.
  const box = await canvas.boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width / 2 - 120, box.y + box.height / 2 + 40, { steps: 2 });
  await page.mouse.up();
  await settled(page);
  await canvas.screenshot({ path: path.join(OUT, "enhanced-view.png") });
  log("orbited");

  const accepted = page.waitForResponse((r) => r.url().endsWith("/enhance") && r.request().method() === "POST");
  await page.getByRole("button", { name: "Enhance this view" }).click();
  const enhanceResponse = await accepted;
  check(enhanceResponse.status() === 202, `enhance answered HTTP ${enhanceResponse.status()}`);
  result.enhance_body = JSON.parse(requests.find((r) => r.url.endsWith("/enhance")).body);
  result.canvas_css_size = [box.width, box.height];
  log(`enhance sent: ${JSON.stringify(result.enhance_body)}`);

  await viewerReady(page, 2);
  result.metrics_v2 = await metricsShown(page);
  result.state_v2 = (await page.getByTestId("job-state").textContent()).trim();
  check(/^\d+(\.\d)?%$/.test(result.metrics_v2.accepted_fraction ?? ""), `accepted pixels: ${result.metrics_v2.accepted_fraction}`);
  check(/^\d+\.\d{4}$/.test(result.metrics_v2.enhanced_view_error_before ?? ""), "fit to the enhanced view before is shown");
  check(/^\d+\.\d{4}$/.test(result.metrics_v2.enhanced_view_error_after ?? ""), "fit to the enhanced view after is shown");
  result.versions_listed = await page.$$eval('[data-testid="versions"] button', (b) => b.map((x) => x.textContent));
  check(result.versions_listed.length === 2, `versions listed: ${result.versions_listed.length}`);
  log(`version 2 on screen; metrics ${JSON.stringify(result.metrics_v2)}`);
  await page.screenshot({ path: path.join(OUT, "workspace.png") });

  // Before / after: version 1 on the left of the slider, version 2 on the right.
  await page.getByLabel("Compare v2 with").selectOption("1");
  await page.waitForSelector('[data-testid="viewer-compare"][data-status="ready"]', { timeout: 60000 });
  await settled(page);
  await page.screenshot({ path: path.join(OUT, "compare.png") });
  log("comparison shown");

  // Export: the .ply link of the version on screen.
  const download = page.waitForEvent("download");
  await page.locator('a[data-format="ply"]').click();
  const file = await download;
  const plyPath = path.join(OUT, "download.ply");
  await file.saveAs(plyPath);
  const head = fs.readFileSync(plyPath).subarray(0, 3).toString("latin1");
  result.ply = { path: plyPath, suggested: file.suggestedFilename(), size: fs.statSync(plyPath).size, head };
  check(head === "ply", `the download starts with ${JSON.stringify(head)}`);
  log(`downloaded ${result.ply.suggested} (${result.ply.size} bytes)`);

  // Go on from version 1: a copy of it becomes version 3, the one on screen.
  await page.getByLabel("Compare v2 with").selectOption("");
  await page.locator('[data-testid="versions"] button[data-version="1"]').click();
  const restoreAnswer = page.waitForResponse((r) => r.url().endsWith("/versions/1/restore") && r.request().method() === "POST");
  await page.getByRole("button", { name: "Go on from v1" }).click();
  check((await restoreAnswer).status() === 202, "the restore was accepted");
  await viewerReady(page, 3);
  result.versions_after_restore = await page.$$eval('[data-testid="versions"] button', (b) => b.map((x) => x.textContent));
  check(result.versions_after_restore.length === 3, `versions after the restore: ${result.versions_after_restore.length}`);
  check(result.versions_after_restore[0].includes("v3 · restored from v1"), `newest: ${result.versions_after_restore[0]}`);
  check((await page.getByRole("button", { name: /Go on from/ }).count()) === 0, "no restore offered for the latest");
  await page.screenshot({ path: path.join(OUT, "restored.png") });
  log("version 1 restored as version 3");
}

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "glimpse3d-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1100, height: 700 },
    acceptDownloads: true,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error" && !/Failed to load resource/.test(msg.text())) problems.push(`console: ${msg.text()}`);
  });
  const result = { url: args.url };
  let status = 0;
  try {
    await run(page, result);
    check(problems.length === 0, `the page reported errors:\n${problems.join("\n")}`);
    log("all checks passed");
  } catch (err) {
    status = 1;
    result.failure = String(err && err.stack ? err.stack : err);
    result.page_problems = problems;
    console.error(result.failure);
    await page.screenshot({ path: path.join(OUT, "failure.png") }).catch(() => {});
  } finally {
    result.seconds = (Date.now() - t0) / 1000;
    fs.writeFileSync(path.join(OUT, "result.json"), `${JSON.stringify(result, null, 2)}\n`);
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.exit(status);
}

main();
