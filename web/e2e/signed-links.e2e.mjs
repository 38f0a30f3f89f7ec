// The workspace on a gateway that authenticates: open a finished job with a bearer token (the `#token=`
// fragment), and check that the photo, the splat in the viewer and every download load through the
// signed links the gateway puts in the job (an <img src> or a download link cannot send the
// Authorization header), that no request is refused, and that no link carries the token.
//
//   node e2e/signed-links.e2e.mjs --url http://127.0.0.1:8080 --job JOB_ID --token JWT --out DIR
//
// result.json (what was seen) and, on failure, failure.png go to --out. Exit status 0 when every check
// passed, 1 otherwise.

import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";

import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    job: { type: "string" },
    token: { type: "string" },
    out: { type: "string" },
    chromium: { type: "string", default: process.env.CHROMIUM || "/usr/bin/chromium" },
  },
});
for (const name of ["url", "job", "token", "out"]) {
  if (!args[name]) {
    console.error(`usage: node e2e/signed-links.e2e.mjs --url URL --job ID --token JWT --out DIR (missing --${name})`);
    process.exit(2);
  }
}
const OUT = path.resolve(args.out);
fs.mkdirSync(OUT, { recursive: true });

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

const browser = await chromium.launch({
  executablePath: args.chromium,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const result = { refused: [], requests: [] };
page.on("response", (response) => {
  const url = response.url();
  if (url.includes("/api/v1/")) result.requests.push(`${response.status()} ${url}`);
  if (response.status() >= 400) result.refused.push(`${response.status()} ${url}`);
});
let status = 0;
try {
  await page.goto(`${args.url}/#token=${encodeURIComponent(args.token)}`);
  check(!page.url().includes(args.token), "the token left the address bar");
  await page.evaluate((id) => {
    window.location.hash = `#/jobs/${id}`;
  }, args.job);
  await page.waitForSelector('[data-testid="viewer"][data-status="ready"]', { timeout: 120000 });
  result.photo = await (
    await page.waitForFunction(() => {
      const img = document.querySelector("img.job-photo");
      return img && img.complete && img.naturalWidth > 0 ? { src: img.getAttribute("src"), width: img.naturalWidth } : null;
    }, null, { timeout: 30000 })
  ).jsonValue();
  check(result.photo.src.includes("sig="), `the photo's link is signed: ${result.photo.src}`);
  const links = await page.$$eval("a[download]", (anchors) => anchors.map((a) => a.href));
  check(links.length >= 3, `the export panel offers the downloads (found ${links.length})`);
  // What the browser gets when the user follows each link: no Authorization header, only the signature.
  result.downloads = await page.evaluate(async (hrefs) => {
    const out = [];
    for (const href of hrefs) {
      const response = await fetch(href, { credentials: "omit" });
      out.push({ href, status: response.status, bytes: (await response.arrayBuffer()).byteLength });
    }
    return out;
  }, links);
  for (const d of result.downloads) {
    check(d.href.includes("sig="), `a download link is signed: ${d.href}`);
    check(d.status === 200 && d.bytes > 0, `download ${d.href} answered ${d.status} with ${d.bytes} bytes`);
  }
  for (const request of result.requests) check(!request.includes(args.token), "no request URL carries the token");
  check(result.refused.length === 0, `no request was refused: ${result.refused.join(", ")}`);
  console.log(`photo ${result.photo.width} px wide, splat on screen, ${result.downloads.length} downloads`);
} catch (error) {
  status = 1;
  console.error(error.message);
  await page.screenshot({ path: path.join(OUT, "failure.png") }).catch(() => {});
} finally {
  fs.writeFileSync(path.join(OUT, "result.json"), JSON.stringify(result, null, 2));
  await browser.close();
}
process.exit(status);
