// Basins, streams and locations through the official TypeScript SDK (docs/s2-compat.md §4, §5).
import { afterAll, describe, expect, it } from "vitest";
import { BasinTracker, client, expectS2Error, uniqueBasinName } from "./helpers.js";

const s2 = client();
const basins = new BasinTracker(s2);
afterAll(() => basins.deleteAll());

describe("basins", () => {
	it("creates, lists, reads back, reconfigures, ensures and deletes a basin", async () => {
		const basin = basins.track(uniqueBasinName("basin"));
		const created = await s2.basins.create({
			basin,
			config: {
				createStreamOnAppend: true,
				defaultStreamConfig: {
					retentionPolicy: { ageSecs: 3600 },
					timestamping: { mode: "arrival" },
				},
			},
		});
		expect(created.name).toBe(basin);
		expect(created.location).toBe("local");
		expect(created.createdAt).toBeInstanceOf(Date);

		const listed = await s2.basins.list({ prefix: basin });
		expect(listed.basins.map((b) => b.name)).toEqual([basin]);
		expect(listed.hasMore).toBe(false);

		const config = await s2.basins.getConfig({ basin });
		expect(config.createStreamOnAppend).toBe(true);
		expect(config.createStreamOnRead).toBe(false);
		// Unset, the storage class reads back as the one streams get, as S2 shows it.
		expect(config.defaultStreamConfig?.storageClass).toBe("express");
		expect(config.defaultStreamConfig?.retentionPolicy).toEqual({ ageSecs: 3600 });
		expect(config.defaultStreamConfig?.timestamping?.mode).toBe("arrival");

		const reconfigured = await s2.basins.reconfigure({
			basin,
			defaultStreamConfig: { storageClass: "standard" },
		});
		expect(reconfigured.defaultStreamConfig?.storageClass).toBe("standard");
		expect(reconfigured.defaultStreamConfig?.retentionPolicy).toEqual({ ageSecs: 3600 });
		expect(reconfigured.createStreamOnAppend).toBe(true);

		const replaced = await s2.basins.ensure({ basin, config: { createStreamOnRead: true } });
		expect(replaced.result).toBe("updated");
		const again = await s2.basins.ensure({ basin, config: { createStreamOnRead: true } });
		expect(again.result).toBe("noop");
		const ensuredConfig = await s2.basins.getConfig({ basin });
		expect(ensuredConfig.createStreamOnAppend).toBe(false);
		expect(ensuredConfig.defaultStreamConfig ?? null).toBeNull();

		await s2.basins.delete({ basin });
		const afterDelete = await s2.basins.list({ prefix: basin });
		expect(afterDelete.basins.every((b) => b.deletedAt instanceof Date)).toBe(true);
	});

	it("gives streams the basin's default storage class", async () => {
		const basin = await basins.create("standard", {
			config: { defaultStreamConfig: { storageClass: "standard" } },
		});
		expect((await s2.basins.getConfig({ basin })).defaultStreamConfig?.storageClass).toBe(
			"standard",
		);
		const streams = s2.basin(basin).streams;
		await streams.create({ stream: "inherits" });
		expect((await streams.getConfig({ stream: "inherits" })).storageClass).toBe("standard");
	});

	it("refuses a duplicate basin and a zero retention with S2's codes", async () => {
		const basin = await basins.create("dup");
		await expectS2Error(s2.basins.create({ basin }), 409, "resource_already_exists");
		await expectS2Error(
			s2.basins.create({
				basin: basins.track(uniqueBasinName("zero")),
				config: { defaultStreamConfig: { retentionPolicy: { ageSecs: 0 } } },
			}),
			422,
			"invalid",
		);
		await expectS2Error(
			s2.basins.getConfig({ basin: uniqueBasinName("missing") }),
			404,
			"basin_not_found",
		);
	});
});

describe("streams", () => {
	it("creates, lists, reads back, reconfigures, ensures and deletes streams", async () => {
		const streams = s2.basin(await basins.create("streams")).streams;
		const created = await streams.create({
			stream: "orders/eu",
			config: { storageClass: "standard", retentionPolicy: { infinite: {} } },
		});
		expect(created.name).toBe("orders/eu");
		expect(created.createdAt).toBeInstanceOf(Date);
		await streams.create({ stream: "orders/us" });

		const config = await streams.getConfig({ stream: "orders/eu" });
		expect(config.storageClass).toBe("standard");
		expect(config.retentionPolicy).toEqual({ infinite: {} });
		expect(config.timestamping?.mode).toBe("client-prefer");
		expect((await streams.getConfig({ stream: "orders/us" })).storageClass).toBe("express");

		const firstPage = await streams.list({ prefix: "orders/", limit: 1 });
		expect(firstPage.streams.map((s) => s.name)).toEqual(["orders/eu"]);
		expect(firstPage.hasMore).toBe(true);
		const secondPage = await streams.list({ prefix: "orders/", startAfter: "orders/eu" });
		expect(secondPage.streams.map((s) => s.name)).toEqual(["orders/us"]);
		expect(secondPage.hasMore).toBe(false);

		const reconfigured = await streams.reconfigure({
			stream: "orders/eu",
			timestamping: { uncapped: true },
		});
		expect(reconfigured.timestamping).toEqual({ mode: "client-prefer", uncapped: true });
		expect(reconfigured.storageClass).toBe("standard");

		const ensured = await streams.ensure({ stream: "orders/eu" });
		expect(ensured.result).toBe("updated"); // replacement: back to the defaults
		expect((await streams.getConfig({ stream: "orders/eu" })).storageClass).toBe("express");
		expect((await streams.ensure({ stream: "orders/new" })).result).toBe("created");

		await streams.delete({ stream: "orders/us" });
		const gone = await streams
			.getConfig({ stream: "orders/us" })
			.then(() => undefined, (error: { status?: number }) => error.status);
		// Deletion runs in the background: "being deleted" (409) and "gone" (404) are both right.
		expect([404, 409]).toContain(gone);
		await expectS2Error(
			streams.create({ stream: "orders/eu" }),
			409,
			"resource_already_exists",
		);
	});
});

describe("locations", () => {
	it("lists one location, which is the default and can be set as the default", async () => {
		const locations = await s2.locations.list();
		expect(locations.map((l) => [l.name, l.isPrivate])).toEqual([["local", false]]);
		expect(await s2.locations.getDefault()).toMatchObject({ name: "local", isPrivate: false });
		expect(await s2.locations.setDefault({ location: "local" })).toMatchObject({
			name: "local",
		});
	});

	it("refuses another location as the default or for a basin", async () => {
		const refused = await expectS2Error(
			s2.locations.setDefault({ location: "aws:us-east-1" }),
			422,
			"invalid",
		);
		expect(refused.message).toContain("'local'");
		expect((await s2.locations.getDefault()).name).toBe("local");

		const basin = basins.track(uniqueBasinName("elsewhere"));
		await expectS2Error(
			s2.basins.create({ basin, location: "aws:us-east-1" }),
			422,
			"invalid",
		);
		await expectS2Error(s2.basins.getConfig({ basin }), 404, "basin_not_found");
	});

	it("creates a basin in the local location when asked for it", async () => {
		const basin = basins.track(uniqueBasinName("local"));
		expect((await s2.basins.create({ basin, location: "local" })).location).toBe("local");
		const ensured = await s2.basins.ensure({ basin, location: "local" });
		expect(ensured.result).toBe("noop");
		expect(ensured.basin.location).toBe("local");
	});
});
