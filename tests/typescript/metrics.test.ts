// The metrics API through the official TypeScript SDK (docs/s2-compat.md §4.5): account, basin
// and stream metric sets count known traffic. Pending until the metrics API is merged:
// PENDING_FEATURES in test_typescript_sdk.py expects this file to fail until then.
import { AppendInput, AppendRecord, type Metric } from "@s2-dev/streamstore";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BasinTracker, client } from "./helpers.js";

const s2 = client();
const basins = new BasinTracker(s2);
let basin: string;
const stream = "measured";

beforeAll(async () => {
	basin = await basins.create("metrics");
	await s2.basin(basin).streams.create({ stream });
	const handle = s2.basin(basin).stream(stream);
	for (let i = 0; i < 3; i++) {
		await handle.append(AppendInput.create([AppendRecord.string({ body: "x".repeat(100) })]));
	}
	await handle.read({ start: { from: { seqNum: 0 } } });
	await handle.read({ start: { from: { seqNum: 1 } } });
	await handle.close();
});
afterAll(() => basins.deleteAll());

/** The last hour up to a minute from now, in the SDK's terms (Dates). */
function lastHour() {
	const now = Date.now();
	return { start: new Date(now - 3_600_000), end: new Date(now + 60_000) };
}

/** Every number a metric carries, whatever its kind. */
function numbers(metrics: ReadonlyArray<Metric>): number[] {
	return metrics.flatMap((metric) => {
		if ("scalar" in metric) return [metric.scalar.value];
		if ("accumulation" in metric) return metric.accumulation.values.map(([, v]) => v);
		if ("gauge" in metric) return metric.gauge.values.map(([, v]) => v);
		return [];
	});
}

const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);

describe("metrics", () => {
	it("counts the account's operations and active basins", async () => {
		const ops = await s2.metrics.account({ set: "account-ops", interval: "minute", ...lastHour() });
		expect(sum(numbers(ops.values))).toBeGreaterThan(0);
		const active = await s2.metrics.account({ set: "active-basins", ...lastHour() });
		expect(active.values.length).toBeGreaterThan(0);
	});

	it("counts the basin's appends and reads", async () => {
		const appendOps = await s2.metrics.basin({
			basin,
			set: "append-ops",
			interval: "minute",
			...lastHour(),
		});
		expect(sum(numbers(appendOps.values))).toBeGreaterThanOrEqual(3);
		const readOps = await s2.metrics.basin({ basin, set: "read-ops", ...lastHour() });
		expect(sum(numbers(readOps.values))).toBeGreaterThanOrEqual(2);
		const appended = await s2.metrics.basin({ basin, set: "append-throughput", ...lastHour() });
		expect(sum(numbers(appended.values))).toBeGreaterThan(0);
	});

	it("reports the stored bytes of the basin and of the stream", async () => {
		// Storage may be sampled rather than counted: give it a minute to show.
		const deadline = Date.now() + 65_000;
		for (;;) {
			const ofBasin = await s2.metrics.basin({ basin, set: "storage", ...lastHour() });
			const ofStream = await s2.metrics.stream({ basin, stream, set: "storage", ...lastHour() });
			const stored = [numbers(ofBasin.values), numbers(ofStream.values)];
			if (stored.every((values) => Math.max(0, ...values) > 0)) break;
			expect(Date.now(), `no stored bytes reported: ${JSON.stringify(stored)}`).toBeLessThan(
				deadline,
			);
			await new Promise((resolve) => setTimeout(resolve, 1_000));
		}
	}, 90_000);

	it("refuses a start after the end", async () => {
		const { start, end } = lastHour();
		await expect(
			s2.metrics.account({ set: "account-ops", start: end, end: start }),
		).rejects.toMatchObject({ status: 422 });
	});
});
