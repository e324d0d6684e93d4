// Run by tests/typescript/test_typescript_sdk.py from this directory, against a real server.
import { defineConfig } from "vitest/config";

export default defineConfig({
	test: {
		include: ["*.test.ts"],
		testTimeout: 30_000,
		hookTimeout: 30_000,
	},
});
