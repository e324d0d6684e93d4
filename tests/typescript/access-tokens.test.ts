// Access tokens through the official TypeScript SDK (docs/security.md): issue, list and revoke
// with the root token; a scoped token is held to its scope with S2's 403 and, once revoked,
// refused with 401.
import { AppendInput, AppendRecord } from "@s2-dev/streamstore";
import { afterAll, describe, expect, it } from "vitest";
import { BasinTracker, bodies, client, expectS2Error } from "./helpers.js";

const root = client();
const basins = new BasinTracker(root);
afterAll(() => basins.deleteAll());

const tokenPrefix = `ts-${Math.random().toString(36).slice(2, 8)}-`;

describe("access tokens", () => {
	it("issues, lists and revokes a token that holds to its scope", async () => {
		const basin = await basins.create("tokens");
		const other = await basins.create("tokens-other");
		await root.basin(basin).streams.create({ stream: "logs/app" });
		await root
			.basin(basin)
			.stream("logs/app")
			.append(AppendInput.create([AppendRecord.string({ body: "hello" })]));

		const id = `${tokenPrefix}reader`;
		const expiresAt = new Date(Date.now() + 3_600_000);
		const issued = await root.accessTokens.issue({
			id,
			expiresAt,
			scope: {
				basins: { exact: basin },
				streams: { prefix: "logs/" },
				opGroups: { stream: { read: true } },
			},
		});
		expect(issued.accessToken.length).toBeGreaterThan(20);

		const listed = await root.accessTokens.list({ prefix: id });
		expect(listed.accessTokens.map((t) => t.id)).toEqual([id]);
		const info = listed.accessTokens[0];
		expect(info.scope.basins).toEqual({ exact: basin });
		expect(info.scope.streams).toEqual({ prefix: "logs/" });
		expect(info.scope.opGroups?.stream).toEqual({ read: true, write: false });
		expect(info.expiresAt).toEqual(expiresAt);
		expect(JSON.stringify(listed)).not.toContain(issued.accessToken);

		const reader = client(issued.accessToken);
		const stream = reader.basin(basin).stream("logs/app");
		try {
			expect(bodies(await stream.read({ start: { from: { seqNum: 0 } } }))).toEqual(["hello"]);
			await expectS2Error(
				stream.append(AppendInput.create([AppendRecord.string({ body: "no" })])),
				403,
				"permission_denied",
			);
			await expectS2Error(
				reader.basin(other).stream("logs/app").checkTail(),
				403,
				"permission_denied",
			);
			await expectS2Error(
				reader.basin(basin).stream("metrics").checkTail(),
				403,
				"permission_denied",
			);
			await expectS2Error(reader.basins.create({ basin: `${basin}-x` }), 403, "permission_denied");
			await expectS2Error(
				reader.accessTokens.issue({ id: `${tokenPrefix}escalated`, scope: { ops: ["read"] } }),
				403,
				"permission_denied",
			);

			await root.accessTokens.revoke({ id });
			await expectS2Error(stream.checkTail(), 401, "authn");
			await expectS2Error(root.accessTokens.revoke({ id }), 404, "access_token_not_found");
			expect((await root.accessTokens.list({ prefix: id })).accessTokens).toEqual([]);
		} finally {
			await stream.close();
		}
	});

	it("refuses a call without a valid token", async () => {
		await expectS2Error(client("not-a-token").basins.list(), 401, "authn");
	});
});
