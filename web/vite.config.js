// Vite builds the workspace into dist/ (served by the gateway's HTTP facade when GLIMPSE3D_WEB_DIR points
// there); `npm run dev` serves it with hot reload and forwards /api to a running gateway; Vitest runs the
// component tests in happy-dom.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const here = path.dirname(fileURLToPath(import.meta.url));

// The gateway the dev server forwards /api to: GLIMPSE3D_HTTP_URL, else the address `make up` wrote.
function gatewayUrl() {
  if (process.env.GLIMPSE3D_HTTP_URL) return process.env.GLIMPSE3D_HTTP_URL;
  const file = path.join(here, "..", "var", "stack", "gateway.http");
  if (fs.existsSync(file)) {
    const addr = fs.readFileSync(file, "utf8").trim();
    return addr.startsWith("http") ? addr : `http://${addr}`;
  }
  return "http://127.0.0.1:8080";
}

export default defineConfig({
  plugins: [react()],
  // Relative asset paths: the build works wherever the facade mounts it.
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // The splat renderer (with its WebAssembly sorter inlined) is one ~3 MB chunk, loaded lazily.
    chunkSizeWarningLimit: 4096,
  },
  server: {
    proxy: { "/api": { target: gatewayUrl(), changeOrigin: true } },
  },
  test: {
    environment: "happy-dom",
    include: ["tests/**/*.test.{js,jsx}"],
    setupFiles: ["tests/setup.js"],
    restoreMocks: true,
    // The 5 s default per test is tight on a busy 2-core machine.
    testTimeout: 30000,
  },
});
