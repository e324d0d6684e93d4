// What every file of this suite shares: a client of the server under test, unique names, and
// the basins a file made, deleted when it ends. tests/typescript/test_typescript_sdk.py starts
// the server (access control on) and sets S2S_HTTP_URL and S2S_ACCESS_TOKEN (the root token).
import { S2, S2Error } from "@s2-dev/streamstore";
import { expect } from "vitest";

function requireEnv(name: string): string {
	const value = process.env[name];
	if (!value) {
		throw new Error(
			`${name} is not set: run this suite through tests/typescript/test_typescript_sdk.py`,
		);
	}
	return value;
}

export const serverUrl = requireEnv("S2S_HTTP_URL");
export const rootToken = requireEnv("S2S_ACCESS_TOKEN");

/** The SDK in direct mode: both endpoints are the server, the basin goes in `s2-basin`. */
export function client(accessToken: string = rootToken): S2 {
	return new S2({
		accessToken,
		endpoints: { account: serverUrl, basin: serverUrl },
		// One attempt: a retried failure would only hide what the server answered.
		retry: { maxAttempts: 1 },
	});
}

/** A basin name (8-48 of a-z, 0-9, '-') no other test of the run uses. */
export function uniqueBasinName(tag: string): string {
	const suffix = Math.random().toString(36).slice(2, 10);
	return `ts-${tag}-${suffix}`.slice(0, 48);
}

/** Basins a file creates, deleted when it ends (afterAll). */
export class BasinTracker {
	private readonly names: string[] = [];

	constructor(private readonly s2: S2) {}

	async create(
		tag: string,
		input: Omit<Parameters<S2["basins"]["create"]>[0], "basin"> = {},
	): Promise<string> {
		const basin = uniqueBasinName(tag);
		this.names.push(basin);
		await this.s2.basins.create({ basin, ...input });
		return basin;
	}

	track(basin: string): string {
		this.names.push(basin);
		return basin;
	}

	async deleteAll(): Promise<void> {
		for (const basin of this.names) {
			await this.s2.basins.delete({ basin }).catch((error: unknown) => {
				if (!(error instanceof S2Error && error.status === 404)) throw error;
			});
		}
	}
}

/** Awaits a call that must fail with the server's S2 error `code` and HTTP `status`. */
export async function expectS2Error(
	call: Promise<unknown>,
	status: number,
	code: string,
): Promise<S2Error> {
	const error = await call.then(
		() => undefined,
		(caught: unknown) => caught,
	);
	expect(error, `expected ${status} ${code}, the call succeeded`).toBeInstanceOf(S2Error);
	const s2Error = error as S2Error;
	expect({ status: s2Error.status, code: s2Error.code }).toEqual({ status, code });
	return s2Error;
}

/** The bodies of a read batch's records. */
export function bodies(batch: { records: ReadonlyArray<{ body: string }> }): string[] {
	return batch.records.map((record) => record.body);
}
