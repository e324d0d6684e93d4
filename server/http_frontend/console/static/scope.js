// What the signed-in token may do, from its own scope (`GET /v1/whoami`), so the console
// shows only what the token allows. The server checks every call regardless: this only
// keeps the page from offering what would be refused. It mirrors server/access/scope.py.

const GROUPS = {
  account: ["list-basins", "get-basin-config", "list-access-tokens", "account-metrics",
    "list-locations", "get-default-location", "|", "create-basin", "delete-basin",
    "reconfigure-basin", "issue-access-token", "revoke-access-token", "set-default-location"],
  basin: ["list-streams", "get-stream-config", "basin-metrics", "|", "create-stream",
    "delete-stream", "reconfigure-stream"],
  stream: ["read", "check-tail", "stream-metrics", "|", "append", "trim", "fence"],
};

function covers(set, name) {
  if (!set) return false;
  if ("exact" in set) return set.exact !== "" && name === set.exact;
  return name.startsWith(set.prefix);
}

export class Permissions {
  constructor(whoami) {
    this.accessControl = whoami.access_control;
    this.info = whoami.token;
    const scope = whoami.token.scope;
    this.scope = scope;
    this.operations = new Set(scope.ops || []);
    for (const [group, ops] of Object.entries(GROUPS)) {
      const split = ops.indexOf("|");
      const grant = (scope.op_groups || {})[group] || {};
      if (grant.read) ops.slice(0, split).forEach((op) => this.operations.add(op));
      if (grant.write) ops.slice(split + 1).forEach((op) => this.operations.add(op));
    }
    const streams = scope.streams;
    this.streamPrefix = whoami.token.auto_prefix_streams && streams && "prefix" in streams
      ? streams.prefix : "";
  }

  /** Whether the token permits `op` on the basin and stream given (either may be left out). */
  can(op, { basin, stream } = {}) {
    if (!this.operations.has(op)) return false;
    if (basin !== undefined && !covers(this.scope.basins, basin)) return false;
    if (stream !== undefined && !covers(this.scope.streams, this.streamPrefix + stream)) return false;
    return true;
  }

  /** A group permission held as such (the lake's calls are granted by group). */
  group(name, write) {
    const grant = (this.scope.op_groups || {})[name] || {};
    return Boolean(write ? grant.write : grant.read);
  }

  /** Whether the scope covers every basin and stream (SQL needs it). */
  everything() {
    const { basins, streams } = this.scope;
    return Boolean(basins && basins.prefix === "" && streams && streams.prefix === "");
  }
}
