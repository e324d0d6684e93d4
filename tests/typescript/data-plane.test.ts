// Appends and reads through the official TypeScript SDK (docs/s2-compat.md §6-§9): unary calls,
// append sessions and the producer, read sessions with caught-up detection, over both of the
// SDK's transports (s2s: S2S sessions over HTTP/2; fetch: unary appends and SSE reads).
import {
	AppendInput,
	AppendRecord,
	BatchTransform,
	FencingTokenMismatchError,
	Producer,
	RangeNotSatisfiableError,
	type S2Stream,
	SeqNumMismatchError,
	type SessionTransports,
} from "@s2-dev/streamstore";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BasinTracker, bodies, client } from "./helpers.js";

const s2 = client();
const basins = new BasinTracker(s2);
let basin: string;
const openStreams: S2Stream[] = [];

beforeAll(async () => {
	basin = await basins.create("data");
});
afterAll(async () => {
	await Promise.all(openStreams.map((stream) => stream.close()));
	await basins.deleteAll();
});

let streamCount = 0;

/** A new stream of the file's basin, closed when the file ends. */
async function newStream(transport?: SessionTransports): Promise<S2Stream> {
	const name = `stream-${streamCount++}`;
	await s2.basin(basin).streams.create({ stream: name });
	const stream = s2.basin(basin).stream(name, { forceTransport: transport });
	openStreams.push(stream);
	return stream;
}

function records(...texts: string[]): AppendInput {
	return AppendInput.create(texts.map((body) => AppendRecord.string({ body })));
}

describe("unary append and read", () => {
	it("appends a batch and reads it back as strings and as bytes", async () => {
		const stream = await newStream();
		const ack = await stream.append(
			AppendInput.create([
				AppendRecord.string({
					body: "first",
					headers: [["kind", "text"]],
					timestamp: 1_700_000_000_000,
				}),
				AppendRecord.bytes({ body: new Uint8Array([0, 1, 2, 255]) }),
				AppendRecord.string({ body: "third" }),
			]),
		);
		expect([ack.start.seqNum, ack.end.seqNum, ack.tail.seqNum]).toEqual([0, 3, 3]);
		expect((await stream.checkTail()).tail.seqNum).toBe(3);

		const batch = await stream.read({
			start: { from: { seqNum: 0 } },
			stop: { limits: { count: 10 } },
		});
		expect(batch.records.map((r) => r.seqNum)).toEqual([0, 1, 2]);
		expect(batch.records[0].body).toBe("first");
		expect(batch.records[0].headers).toEqual([["kind", "text"]]);
		// The client's timestamp is kept (client-prefer); the others are arrival times.
		expect(batch.records[0].timestamp).toEqual(new Date(1_700_000_000_000));
		expect(batch.records[2].timestamp.getTime()).toBeGreaterThan(1_700_000_000_000);

		const raw = await stream.read(
			{ start: { from: { seqNum: 1 } }, stop: { limits: { count: 1 } } },
			{ as: "bytes" },
		);
		expect(Array.from(raw.records[0].body)).toEqual([0, 1, 2, 255]);

		const fromTail = await stream.read({ start: { from: { tailOffset: 1 } } });
		expect(bodies(fromTail)).toEqual(["third"]);
	});

	it("answers a read past the tail with RangeNotSatisfiableError carrying the tail", async () => {
		const stream = await newStream();
		await stream.append(records("only"));
		const error = await stream.read({ start: { from: { seqNum: 5 } } }).catch((e) => e);
		expect(error).toBeInstanceOf(RangeNotSatisfiableError);
		expect((error as RangeNotSatisfiableError).tail?.seqNum).toBe(1);
		const clamped = await stream.read({
			start: { from: { seqNum: 5 }, clamp: true },
			stop: { waitSecs: 1 },
		});
		expect(clamped.records).toEqual([]);
	});

	it("leaves command records out when asked to", async () => {
		const stream = await newStream();
		await stream.append(
			AppendInput.create([
				AppendRecord.string({ body: "a" }),
				AppendRecord.fence("writer-1"),
				AppendRecord.string({ body: "b" }),
			]),
		);
		const all = await stream.read({ start: { from: { seqNum: 0 } } });
		expect(all.records).toHaveLength(3);
		const data = await stream.read({
			start: { from: { seqNum: 0 } },
			ignoreCommandRecords: true,
		});
		expect(bodies(data)).toEqual(["a", "b"]);
	});
});

describe("conditional appends and fencing", () => {
	it("refuses a wrong matchSeqNum with SeqNumMismatchError and appends nothing", async () => {
		const stream = await newStream();
		await stream.append(records("zero", "one"));
		const error = await stream
			.append(AppendInput.create([AppendRecord.string({ body: "x" })], { matchSeqNum: 1 }))
			.catch((e) => e);
		expect(error).toBeInstanceOf(SeqNumMismatchError);
		expect((error as SeqNumMismatchError).expectedSeqNum).toBe(2);
		expect((error as SeqNumMismatchError).status).toBe(412);
		const ok = await stream.append(
			AppendInput.create([AppendRecord.string({ body: "two" })], { matchSeqNum: 2 }),
		);
		expect(ok.start.seqNum).toBe(2);
		expect((await stream.checkTail()).tail.seqNum).toBe(3);
	});

	it("refuses a stale fencing token with FencingTokenMismatchError", async () => {
		const stream = await newStream();
		await stream.append(AppendInput.create([AppendRecord.fence("writer-1")]));
		const fenced = (fencingToken: string) =>
			stream.append(
				AppendInput.create([AppendRecord.string({ body: fencingToken })], { fencingToken }),
			);
		await fenced("writer-1");
		await stream.append(
			AppendInput.create([AppendRecord.fence("writer-2")], { fencingToken: "writer-1" }),
		);
		const error = await fenced("writer-1").catch((e) => e);
		expect(error).toBeInstanceOf(FencingTokenMismatchError);
		expect((error as FencingTokenMismatchError).expectedFencingToken).toBe("writer-2");
		await fenced("writer-2");
		await stream.append(records("unfenced writers are not checked"));
		expect((await stream.checkTail()).tail.seqNum).toBe(5);
	});
});

describe.each<SessionTransports>(["s2s", "fetch"])("append session (%s)", (transport) => {
	it("acknowledges pipelined batches in order", async () => {
		const stream = await newStream(transport);
		const session = await stream.appendSession();
		const tickets = [];
		for (let i = 0; i < 20; i++) {
			tickets.push(await session.submit(records(`${i}-a`, `${i}-b`, `${i}-c`)));
		}
		const acks = await Promise.all(tickets.map((ticket) => ticket.ack()));
		expect(acks.map((ack) => ack.start.seqNum)).toEqual(acks.map((_, i) => 3 * i));
		expect(acks.every((ack) => ack.end.seqNum - ack.start.seqNum === 3)).toBe(true);
		expect(session.lastAckedPosition()?.end.seqNum).toBe(60);
		await session.close();
		const read = await stream.read({ start: { from: { seqNum: 57 } } });
		expect(bodies(read)).toEqual(["19-a", "19-b", "19-c"]);
	});

	it("fails on a wrong matchSeqNum with SeqNumMismatchError", async () => {
		const stream = await newStream(transport);
		const session = await stream.appendSession();
		const good = await session.submit(records("zero"));
		expect((await good.ack()).end.seqNum).toBe(1);
		const bad = await session.submit(
			AppendInput.create([AppendRecord.string({ body: "late" })], { matchSeqNum: 0 }),
		);
		const error = await bad.ack().catch((e) => e);
		expect(error).toBeInstanceOf(SeqNumMismatchError);
		expect((error as SeqNumMismatchError).expectedSeqNum).toBe(1);
		await session.close().catch(() => undefined);
		expect((await stream.checkTail()).tail.seqNum).toBe(1);
	});
});

/** A batch whose first record carries the s2s-producer header (ADR 0016). */
function idempotent(producer: string, seq: number, ...texts: string[]): AppendInput {
	const [first, ...rest] = texts;
	return AppendInput.create([
		AppendRecord.string({ body: first, headers: [["s2s-producer", `${producer} ${seq}`]] }),
		...rest.map((body) => AppendRecord.string({ body })),
	]);
}

describe.each<SessionTransports>(["s2s", "fetch"])("idempotent appends (%s)", (transport) => {
	it("answers a batch sent again with its first ack and writes it once", async () => {
		const stream = await newStream(transport);
		const first = await stream.append(idempotent("ts-writer", 0, "a", "b"));
		const again = await stream.append(idempotent("ts-writer", 0, "a", "b"));
		expect([again.start.seqNum, again.end.seqNum]).toEqual([first.start.seqNum, 2]);
		expect(again.start.timestamp).toEqual(first.start.timestamp);

		// A session resending it after a lost one (at most 16 batches in flight).
		const session = await stream.appendSession({ maxInflightBatches: 16 });
		const resent = await (await session.submit(idempotent("ts-writer", 0, "a", "b"))).ack();
		const next = await (await session.submit(idempotent("ts-writer", 1, "c"))).ack();
		await session.close();
		expect([resent.start.seqNum, resent.end.seqNum]).toEqual([0, 2]);
		expect([next.start.seqNum, next.end.seqNum]).toEqual([2, 3]);

		const read = await stream.read({ start: { from: { seqNum: 0 } } });
		expect(bodies(read)).toEqual(["a", "b", "c"]);
		expect(read.records.every((r) => r.headers.length === 0)).toBe(true);
	});
});

describe("producer", () => {
	it("batches single records over a session and acknowledges each at its sequence number", async () => {
		const stream = await newStream();
		const producer = new Producer(
			new BatchTransform({ lingerDurationMillis: 5, maxBatchRecords: 64 }),
			await stream.appendSession(),
		);
		const tickets = [];
		for (let i = 0; i < 300; i++) {
			tickets.push(await producer.submit(AppendRecord.string({ body: `record-${i}` })));
		}
		const acks = await Promise.all(tickets.map((ticket) => ticket.ack()));
		expect(acks.map((ack) => ack.seqNum())).toEqual(acks.map((_, i) => i));
		// Batched: fewer acknowledged batches than records.
		const batchStarts = new Set(acks.map((ack) => ack.batchAppendAck().start.seqNum));
		expect(batchStarts.size).toBeLessThan(300);
		await producer.close();
		const read = await stream.read({
			start: { from: { seqNum: 299 } },
			stop: { limits: { count: 1 } },
		});
		expect(bodies(read)).toEqual(["record-299"]);
	});
});

describe.each<SessionTransports>(["s2s", "fetch"])("read session (%s)", (transport) => {
	it("reports when it has caught up, then follows live appends", async () => {
		const stream = await newStream(transport);
		await stream.append(records("a", "b", "c", "d", "e"));
		const session = await stream.readSession({ start: { from: { seqNum: 0 } } });
		const reader = session[Symbol.asyncIterator]();
		const seen: string[] = [];
		for (let i = 0; i < 5; i++) {
			const next = await reader.next();
			seen.push(next.value.body);
		}
		expect(seen).toEqual(["a", "b", "c", "d", "e"]);
		const caughtUpAt = await session.caughtUp();
		expect(caughtUpAt.seqNum).toBe(5);
		expect(session.isCaughtUp()).toBe(true);

		await stream.append(records("live"));
		const live = await reader.next();
		expect([live.value.seqNum, live.value.body]).toEqual([5, "live"]);
		await reader.return?.();
	});

	it("ends once caught up when asked to wait 0 seconds", async () => {
		const stream = await newStream(transport);
		await stream.append(records("x", "y"));
		const session = await stream.readSession({
			start: { from: { seqNum: 0 } },
			stop: { waitSecs: 0 },
		});
		const seen: string[] = [];
		for await (const record of session) seen.push(record.body);
		expect(seen).toEqual(["x", "y"]);
	});

	it("stops at a count limit", async () => {
		const stream = await newStream(transport);
		await stream.append(records("1", "2", "3", "4"));
		const session = await stream.readSession({
			start: { from: { tailOffset: 3 } },
			stop: { limits: { count: 2 } },
		});
		const seen: string[] = [];
		for await (const record of session) seen.push(record.body);
		expect(seen).toEqual(["2", "3"]);
	});
});
