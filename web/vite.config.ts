import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// The console imports the TypeScript SDK's sources (its generated code and wrapper: one
// generation, two users). The runtime libraries are deduplicated to the console's own copies,
// so there is one protobuf registry and one ConnectError class.
export default defineConfig({
  plugins: [react()],
  resolve: {
    alias: { "@pingvas/sdk": fileURLToPath(new URL("../sdk/typescript/src", import.meta.url)) },
    dedupe: ["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-web"],
  },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false },
  // `npm run dev` serves on :5173 and hands the API's gRPC-Web calls to `pingvas up`'s gateway.
  server: { port: 5173, proxy: { "^/pingvas\\.": "http://127.0.0.1:8080" } },
});
