// Encrypted streams through the official TypeScript SDK (docs/s2-compat.md §10): a basin's
// `stream_cipher` is stamped on its new streams, whose records need the client's key.
// Pending until client-side encryption (s2-encryption-key) is merged: PENDING_FEATURES in
// test_typescript_sdk.py expects this file to fail until then.
import { randomBytes } from "node:crypto";
import {
	AppendInput,
	AppendRecord,
	type EncryptionAlgorithm,
	type S2Stream,
} from "@s2-dev/streamstore";
import { afterAll, describe, expect, it } from "vitest";
import { BasinTracker, bodies, client, expectS2Error } from "./helpers.js";

const s2 = client();
const basins = new BasinTracker(s2);
const openStreams: S2Stream[] = [];
afterAll(async () => {
	await Promise.all(openStreams.map((stream) => stream.close()));
	await basins.deleteAll();
});

/** A stream of a new basin whose cipher is `cipher`, opened with `key` (or none). */
async function encryptedStream(cipher: EncryptionAlgorithm) {
	const basin = await basins.create("cipher", { config: { streamCipher: cipher } });
	const info = await s2.basin(basin).streams.create({ stream: "secret" });
	const open = (encryptionKey?: Uint8Array) => {
		const stream = s2.basin(basin).stream("secret", encryptionKey ? { encryptionKey } : {});
		openStreams.push(stream);
		return stream;
	};
	return { info, open };
}

const text = (...values: string[]) =>
	AppendInput.create(values.map((body) => AppendRecord.string({ body })));

describe.each<EncryptionAlgorithm>(["aegis-256", "aes-256-gcm"])("encryption (%s)", (cipher) => {
	it("round-trips records with the key, unary and in sessions", async () => {
		const { info, open } = await encryptedStream(cipher);
		expect(info.cipher).toBe(cipher);
		const key = randomBytes(32);
		const stream = open(key);

		await stream.append(text("top", "secret"));
		const session = await stream.appendSession();
		await (await session.submit(text("session"))).ack();
		await session.close();

		const read = await stream.read({ start: { from: { seqNum: 0 } } });
		expect(bodies(read)).toEqual(["top", "secret", "session"]);
		const readSession = await stream.readSession({
			start: { from: { seqNum: 0 } },
			stop: { waitSecs: 0 },
		});
		const seen: string[] = [];
		for await (const record of readSession) seen.push(record.body);
		expect(seen).toEqual(["top", "secret", "session"]);
		// The tail is not secret: checking it needs no key.
		expect((await open().checkTail()).tail.seqNum).toBe(3);
	});

	it("fails to read with a wrong key", async () => {
		const { open } = await encryptedStream(cipher);
		await open(randomBytes(32)).append(text("sealed"));
		await expectS2Error(
			open(randomBytes(32)).read({ start: { from: { seqNum: 0 } } }),
			400,
			"decryption_failed",
		);
	});

	it("refuses appends and reads without a key, naming the cipher", async () => {
		const { open } = await encryptedStream(cipher);
		const withoutKey = open();
		const append = await expectS2Error(withoutKey.append(text("plain")), 400, "bad_header");
		expect(append.message).toContain(cipher);
		await expectS2Error(
			withoutKey.read({ start: { from: { seqNum: 0 } }, stop: { waitSecs: 1 } }),
			400,
			"bad_header",
		);
		expect((await withoutKey.checkTail()).tail.seqNum).toBe(0);
	});
});
