#!/usr/bin/env node
// Interop check: the clonejob.v1 API from Node.js (@grpc/grpc-js), with the
// stubs loaded at run time from ../../protos by @grpc/proto-loader.
//
// Usage: node interop.mjs ADDRESS PARENT
//   ADDRESS  host:port of a running server (plaintext)
//   PARENT   a migrating VM with a completed snapshot cycle, e.g.
//            projects/p1/locations/us-central1/sources/s1/migratingVms/vm1
//
// The server must run with
//   --max-concurrent-jobs 1
//   --fault-plan FILE  where FILE is
//     {"faults": [{"match": "cloneJobs/hold-", "step": "adapting_os", "action": "hold"}]}
// so that the `hold-` job holds the only job slot in ADAPTING_OS until it is
// cancelled: the second job then waits in PENDING while its watch opens, and
// every state it goes through is seen, whatever the timing.
//
// Checks, in the order they run, one output line each ("PASS label: detail" or
// "FAIL label: reason"), then "N passed, N failed"; exit 1 on any failure:
//   connect     the channel is ready;
//   hold        a `hold-` job reaches ADAPTING_OS and stays there;
//   create      a second job is PENDING on Create and on its watch's first message;
//   cancel      Cancel on the held job returns CANCELLING or CANCELLED, and the
//               job ends CANCELLED (which frees the slot for the second job);
//   watch       the second job goes PENDING, ACTIVE, ADAPTING_OS, ACTIVE,
//               SUCCEEDED, revisions strictly increasing, and the stream ends OK;
//   rich error  a bad vm_name is INVALID_ARGUMENT whose grpc-status-details-bin
//               trailer is a google.rpc.Status with one ErrorInfo (reason
//               INVALID_ARGUMENT) and one BadRequest naming
//               clone_job.compute_engine_target_details.vm_name;
//   resume      a watch after a middle revision of the second job gets exactly
//               the later revisions.

import { randomBytes } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const API_PROTOS = path.resolve(HERE, "../../protos");
// Minimal vendored google/rpc/{status,error_details}.proto (not shipped by proto-loader).
const RPC_PROTOS = path.resolve(HERE, "protos");
// google/protobuf/{any,timestamp}.proto are built into protobufjs.

const RPC_TIMEOUT_MS = 30_000;
const WATCH_TIMEOUT_MS = 90_000;
const EXPECTED_STATES = ["PENDING", "ACTIVE", "ADAPTING_OS", "ACTIVE", "SUCCEEDED"];
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
const BAD_FIELD = "clone_job.compute_engine_target_details.vm_name";

/** @typedef {{state: string, name: string}} CloneJob  (the fields this check reads) */
/** @typedef {{clone_job: CloneJob | null, revision: string, heartbeat: boolean}} WatchMessage */

class CheckError extends Error {}

/** @param {unknown} condition @param {string} message */
function check(condition, message) {
  if (!condition) throw new CheckError(message);
}

/** A deadline for one call. */
function deadline(ms = RPC_TIMEOUT_MS) {
  return new Date(Date.now() + ms);
}

/** A job id unique to this run (RFC 1035: lowercase letter first). */
function uniqueId(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;
}

function loadClient(address) {
  const definition = protoLoader.loadSync("clonejob/v1/clone_job_service.proto", {
    includeDirs: [API_PROTOS],
    keepCase: true, // field names as in the .proto: clone_job, after_revision
    longs: String, // int64 revisions as decimal strings, compared as BigInt
    enums: String, // states by name
    defaults: true,
    oneofs: true,
  });
  const loaded = /** @type {any} */ (grpc.loadPackageDefinition(definition));
  return new loaded.clonejob.v1.CloneJobService(address, grpc.credentials.createInsecure());
}

function loadRpcTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) =>
    target.startsWith("google/protobuf/") ? target : path.join(RPC_PROTOS, target);
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
  // Looked up now so that a broken vendored copy fails before any call.
  root.lookupType("google.rpc.ErrorInfo");
  root.lookupType("google.rpc.BadRequest");
  return { Status: root.lookupType("google.rpc.Status"), root };
}

/** Promise wrapper for a unary call with a deadline. */
function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** The rejection of a unary call that must fail. */
async function unaryError(client, method, request) {
  try {
    await unary(client, method, request);
  } catch (error) {
    return /** @type {grpc.ServiceError} */ (error);
  }
  throw new CheckError(`${method} succeeded, expected an error`);
}

function vmBody(vmName) {
  return {
    compute_engine_target_details: {
      vm_name: vmName,
      zone: "us-central1-a",
      machine_type: "n2-standard-2",
    },
  };
}

function createJob(client, parent, id, vmName = id) {
  return unary(client, "CreateCloneJob", {
    parent,
    clone_job_id: id,
    clone_job: vmBody(vmName),
  });
}

/**
 * Open a watch; yields its non-heartbeat messages. The iterator throws the
 * stream's error, and ends when the server ends the stream with OK.
 * @returns {{call: grpc.ClientReadableStream<WatchMessage>, messages: AsyncGenerator<WatchMessage>}}
 */
function watch(client, name, afterRevision = "0") {
  const call = client.WatchCloneJob(
    { name, after_revision: afterRevision },
    { deadline: deadline(WATCH_TIMEOUT_MS) },
  );
  async function* messages() {
    for await (const message of call) {
      if (message.heartbeat) continue;
      check(message.clone_job, `a watch message without clone_job (revision ${message.revision})`);
      yield /** @type {WatchMessage} */ (message);
    }
  }
  return { call, messages: messages() };
}

/** Read a watch until `until(message)`; the messages read. The stream stays open. */
async function readUntil(messages, until) {
  const seen = [];
  for (;;) {
    const { value, done } = await messages.next();
    if (done) throw new CheckError(`watch ended before the expected message; saw ${describe(seen)}`);
    seen.push(value);
    if (until(value)) return seen;
  }
}

/** Stop reading a watch and cancel the call. */
async function closeWatch(stream) {
  await stream.messages.return(undefined);
  stream.call.cancel();
}

/** Read a watch to its OK end; the messages read. */
async function readToEnd(messages) {
  const seen = [];
  for await (const message of messages) seen.push(message);
  return seen;
}

function describe(messages) {
  return messages.map((m) => `${m.revision}:${m.clone_job.state}`).join(" ") || "(nothing)";
}

/** Consecutive duplicates removed: progress updates repeat the state. */
function collapse(states) {
  return states.filter((s, i) => i === 0 || s !== states[i - 1]);
}

function strictlyIncreasing(revisions) {
  return revisions.every((r, i) => i === 0 || BigInt(r) > BigInt(revisions[i - 1]));
}

/** google.rpc.Status from the grpc-status-details-bin trailer, its details unpacked. */
function richStatus(error, types) {
  const raw = error.metadata?.get("grpc-status-details-bin") ?? [];
  check(raw.length === 1, `expected one grpc-status-details-bin trailer, got ${raw.length}`);
  const status = types.Status.decode(/** @type {Buffer} */ (raw[0]));
  const details = status.details.map((any) => {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const type = types.root.lookupType(typeName);
    return { typeName, message: type.toObject(type.decode(any.value), { defaults: true }) };
  });
  return { code: status.code, message: status.message, details };
}

// -- the checks --

/** create: the job is made while the slot is held, so it is PENDING when watched. */
async function startWatchedJob(client, parent) {
  const id = uniqueId("interop");
  const job = await createJob(client, parent, id);
  check(job.state === "PENDING", `Create returned ${job.state}, expected PENDING`);
  const stream = watch(client, job.name);
  try {
    const [first] = await readUntil(stream.messages, () => true);
    check(
      first.clone_job.state === "PENDING",
      `the first watch message is ${first.clone_job.state}, expected PENDING ` +
        "(run the server with --max-concurrent-jobs 1 and the hold fault plan)",
    );
    return { name: job.name, stream, seen: [first] };
  } catch (error) {
    await closeWatch(stream);
    throw error;
  }
}

/** watch: read on to the end and check states and revisions. */
async function finishWatchedJob(watched) {
  const seen = watched.seen.concat(await readToEnd(watched.stream.messages));
  const states = collapse(seen.map((m) => m.clone_job.state));
  check(
    JSON.stringify(states) === JSON.stringify(EXPECTED_STATES),
    `states ${states.join(" → ")}, expected ${EXPECTED_STATES.join(" → ")} (saw ${describe(seen)})`,
  );
  const revisions = seen.map((m) => m.revision);
  check(strictlyIncreasing(revisions), `revisions not strictly increasing: ${revisions.join(" ")}`);
  const line = `${states.join(" → ")}; ${seen.length} messages, revisions ${revisions.join(" ")}`;
  return { seen, line };
}

/** hold: a `hold-` job waits in ADAPTING_OS, holding the only job slot. */
async function startHeldJob(client, parent) {
  const job = await createJob(client, parent, uniqueId("hold"));
  const stream = watch(client, job.name);
  const seen = await readUntil(
    stream.messages,
    (m) => m.clone_job.state === "ADAPTING_OS" || TERMINAL.has(m.clone_job.state),
  );
  await closeWatch(stream);
  const state = seen.at(-1).clone_job.state;
  check(state === "ADAPTING_OS", `the hold- job went to ${state}: no hold fault plan?`);
  const now = await unary(client, "GetCloneJob", { name: job.name });
  check(now.state === "ADAPTING_OS", `the hold- job moved on to ${now.state}: no hold fault plan?`);
  return { name: job.name, line: job.name };
}

/** cancel: Cancel on the held job returns CANCELLING or CANCELLED; it ends CANCELLED. */
async function cancelHeldJob(client, name) {
  const returned = (await unary(client, "CancelCloneJob", { name })).state;
  check(
    returned === "CANCELLING" || returned === "CANCELLED",
    `Cancel returned ${returned}, expected CANCELLING or CANCELLED`,
  );
  const end = await readToEnd(watch(client, name).messages);
  const last = end.at(-1)?.clone_job.state;
  check(last === "CANCELLED", `the cancelled job ended ${last}, expected CANCELLED`);
  return `Cancel returned ${returned}; the job ended CANCELLED`;
}

/** rich error: a bad vm_name gets INVALID_ARGUMENT with ErrorInfo and BadRequest. */
async function checkRichError(client, parent, types) {
  const error = await unaryError(client, "CreateCloneJob", {
    parent,
    clone_job_id: uniqueId("bad"),
    clone_job: vmBody("../../not a vm name"),
  });
  check(
    error.code === grpc.status.INVALID_ARGUMENT,
    `code ${error.code} (${error.details}), expected INVALID_ARGUMENT`,
  );
  const status = richStatus(error, types);
  check(status.code === grpc.status.INVALID_ARGUMENT, `google.rpc.Status code ${status.code}`);
  const infos = status.details.filter((d) => d.typeName === "google.rpc.ErrorInfo");
  check(infos.length === 1, `expected exactly one ErrorInfo, got ${infos.length}`);
  const info = infos[0].message;
  check(info.reason === "INVALID_ARGUMENT", `ErrorInfo.reason ${info.reason}, expected INVALID_ARGUMENT`);
  const bad = status.details.filter((d) => d.typeName === "google.rpc.BadRequest");
  check(bad.length === 1, `expected exactly one BadRequest, got ${bad.length}`);
  const fields = bad[0].message.field_violations.map((v) => v.field);
  check(fields.includes(BAD_FIELD), `BadRequest fields ${fields.join(", ")}; expected ${BAD_FIELD}`);
  return `ErrorInfo ${info.reason} (domain ${info.domain}), BadRequest ${fields.join(", ")}`;
}

/** resume: a watch after a middle revision delivers exactly the later revisions. */
async function checkResume(client, name, seen) {
  const revisions = seen.map((m) => m.revision);
  check(revisions.length >= 3, `too few revisions to pick a middle one: ${revisions.join(" ")}`);
  const middle = revisions[Math.floor(revisions.length / 2)];
  const later = (await readToEnd(watch(client, name, middle).messages)).map((m) => m.revision);
  const expected = revisions.filter((r) => BigInt(r) > BigInt(middle));
  check(
    JSON.stringify(later) === JSON.stringify(expected),
    `after_revision ${middle}: got ${later.join(" ")}, expected ${expected.join(" ")}`,
  );
  return `after_revision ${middle} → ${later.join(" ")}`;
}

// -- main --

const results = { passed: 0, failed: 0 };

/** Run one check, print one line. A failed check returns undefined. */
async function run(label, body) {
  try {
    const value = await body();
    const line = typeof value === "string" ? value : value?.line;
    console.log(`PASS ${label}${line ? `: ${line}` : ""}`);
    results.passed += 1;
    return value ?? true;
  } catch (error) {
    // A failed check has a message; anything else (a gRPC error, a bug) its stack.
    fail(label, error instanceof CheckError ? error.message : (error.stack ?? String(error)));
    return undefined;
  }
}

/** Run a check that needs an earlier one's result; a FAIL line without it. */
function runAfter(earlier, label, body) {
  if (earlier) return run(label, body);
  fail(label, "not run: the check it needs failed");
  return undefined;
}

function fail(label, reason) {
  console.log(`FAIL ${label}: ${reason}`);
  results.failed += 1;
}

async function main() {
  const [address, parent] = process.argv.slice(2);
  if (!address || !parent) {
    console.error("usage: node interop.mjs ADDRESS PARENT");
    return 2;
  }
  const types = loadRpcTypes();
  const client = loadClient(address);
  try {
    const connected = await run(`connect: ${address}`, () =>
      new Promise((resolve, reject) =>
        client.waitForReady(deadline(), (error) => (error ? reject(error) : resolve("ready"))),
      ),
    );
    if (!connected) return 1;
    // The held job takes the only job slot, so the next job waits in PENDING
    // while its watch opens; cancelling the held job lets it run.
    const held = await run("hold: a hold- job waits in ADAPTING_OS", () =>
      startHeldJob(client, parent),
    );
    const watched = await runAfter(held, "create: the new job is PENDING when its watch opens", () =>
      startWatchedJob(client, parent),
    );
    await runAfter(held, "cancel: the held job", () => cancelHeldJob(client, held.name));
    const finished = await runAfter(watched, "watch: the new job to SUCCEEDED, in order", () =>
      finishWatchedJob(watched),
    );
    if (watched && !finished) await closeWatch(watched.stream);
    await run("rich error: a bad vm_name", () => checkRichError(client, parent, types));
    await runAfter(finished, "resume: watch after a middle revision", () =>
      checkResume(client, watched.name, finished.seen),
    );
  } finally {
    client.close();
    console.log(`${results.passed} passed, ${results.failed} failed`);
  }
  return results.failed === 0 ? 0 : 1;
}

process.exitCode = await main();
