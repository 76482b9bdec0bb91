#!/usr/bin/env node
// Interop check: the google.cloud.vmmigration.v1 surface of the server from
// Node.js through Google's own client stack: google-gax (gRPC transport,
// long-running operations over google.longrunning.Operations, page iteration,
// rich errors) with the VmMigration protos of google-proto-files.
//
// The generated package @google-cloud/vmmigration is not on the npm registry
// this project reaches, so VmMigrationClient below is built the way that
// package's generated src/v1/vm_migration_client.ts builds it: the protos as
// one JSON bundle for both the gRPC stub (GrpcClient.loadProtoJSON) and the
// LRO decoders (protobuf.Root.fromJSON), constructSettings from the generated
// client config, PageDescriptor / LongrunningDescriptor, createApiCall per
// method, x-goog-request-params routing headers; only the methods this check
// calls are wrapped.
//
// Usage: node google_client.mjs ADDRESS PARENT
//   ADDRESS  host:port of a running server (plaintext)
//   PARENT   a migrating VM with a completed snapshot cycle, e.g.
//            projects/p1/locations/us-central1/sources/s1/migratingVms/vm1
//
// The server must run with
//   --max-concurrent-jobs 1
//   --fault-plan FILE  where FILE is
//     {"faults": [{"match": "cloneJobs/hold-", "step": "adapting_os", "action": "hold"}]}
// so that the `hold-` job of the cancel check waits in ADAPTING_OS (after the
// jobs before it have run in the only job slot) until it is cancelled.
//
// The client connects as an emulator client does:
//   new VmMigrationClient({servicePath: host, port, sslCreds: grpc.credentials.createInsecure()})
// with the grpc of google-gax; no Google credentials are looked up (universeDomain
// is given, and METADATA_SERVER_DETECTION=none keeps google-auth-library off the
// GCE metadata server).
//
// Checks, in the order they run, one output line each ("PASS label: detail" or
// "FAIL label: reason"), then "N passed, N failed"; exit 1 on any failure:
//   create         createCloneJob, a VM target and a disks target: each operation is
//                  done, named projects/{p}/locations/{l}/operations/operation-…,
//                  its metadata is OperationMetadata verb "create", target the job,
//                  api_version "v1", and `await operation.promise()` gives the
//                  CloneJob, named PARENT/cloneJobs/{id}, PENDING;
//   retry          createCloneJob again with the same requestId: the same operation
//                  (same name) and the same job;
//   get            getCloneJob returns the first job (name, target details);
//   list           listCloneJobs with pageSize 1: page by page (autoPaginate false)
//                  every page holds one job and the pages hold both jobs; the
//                  listCloneJobsAsync iterator finds both too;
//   cancel         a `hold-` job reaches ADAPTING_OS (getCloneJob polled);
//                  cancelCloneJob's operation has verb "cancel" and
//                  requested_cancellation, `await operation.promise()` (polling
//                  google.longrunning.Operations.GetOperation) resolves with a
//                  CancelCloneJobResponse, and getCloneJob then says CANCELLED;
//   succeeded      the first two jobs reach SUCCEEDED (getCloneJob polled);
//   error          a bad vm_name rejects createCloneJob with code 3 INVALID_ARGUMENT;
//                  google-gax's decoding of the grpc-status-details-bin trailer gives
//                  reason (from the ErrorInfo) INVALID_ARGUMENT and statusDetails
//                  holding one BadRequest naming
//                  clone_job.compute_engine_target_details.vm_name;
//   unimplemented  listSources rejects with code 12 UNIMPLEMENTED, naming ListSources.

import { randomBytes, randomUUID } from "node:crypto";

// Before google-gax loads google-auth-library: never probe the GCE metadata server.
process.env.METADATA_SERVER_DETECTION ??= "none";

const { default: gax } = await import("google-gax");
const { default: protoFiles } = await import("google-proto-files");

const { grpc } = gax;

const RPC_TIMEOUT_MS = 30_000;
const POLL_MS = 200;
const HOLD_TIMEOUT_MS = 60_000; // the hold- job waits for the two jobs before it
const RUN_TIMEOUT_MS = 60_000;
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
const BAD_FIELD = "clone_job.compute_engine_target_details.vm_name";
const OPERATION_NAME = /^projects\/([^/]+)\/locations\/([^/]+)\/operations\/operation-\d+-[0-9a-f]+$/;
const VMMIGRATION_PROTO = "google/cloud/vmmigration/v1/vmmigration.proto";

class CheckError extends Error {}

/** @param {unknown} condition @param {string} message */
function check(condition, message) {
  if (!condition) throw new CheckError(message);
}

/** A job id unique to this run (RFC 1035: lowercase letter first). */
function uniqueId(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// -- the client, built like the generated VmMigrationClient --

/**
 * The protos as the generated package ships them (protos/protos.json): one JSON
 * bundle of vmmigration.proto and its imports, field names in camelCase.
 */
function loadJsonProtos() {
  const root = protoFiles.loadSync(protoFiles.getProtoPath("cloud", "vmmigration", "v1", "vmmigration.proto"));
  root.resolveAll();
  return root.toJSON();
}

/** The generated src/v1/vm_migration_client_config.json, for the methods used here. */
const GAPIC_CONFIG = {
  interfaces: {
    "google.cloud.vmmigration.v1.VmMigration": {
      retry_codes: { non_idempotent: [], idempotent: ["DEADLINE_EXCEEDED", "UNAVAILABLE"] },
      retry_params: {
        default: {
          initial_retry_delay_millis: 100,
          retry_delay_multiplier: 1.3,
          max_retry_delay_millis: 60000,
          initial_rpc_timeout_millis: 60000,
          rpc_timeout_multiplier: 1,
          max_rpc_timeout_millis: 60000,
          total_timeout_millis: 600000,
        },
      },
      methods: Object.fromEntries(
        ["ListSources", "CreateCloneJob", "CancelCloneJob", "ListCloneJobs", "GetCloneJob"].map((m) => [
          m,
          { timeout_millis: 60000, retry_codes_name: "non_idempotent", retry_params_name: "default" },
        ]),
      ),
    },
  },
};

class VmMigrationClient {
  static servicePath = "vmmigration.googleapis.com";
  static port = 443;
  static scopes = ["https://www.googleapis.com/auth/cloud-platform"];

  constructor(opts = {}) {
    const servicePath = opts.servicePath || opts.apiEndpoint || VmMigrationClient.servicePath;
    this._providedCustomServicePath = Boolean(opts.servicePath || opts.apiEndpoint);
    const port = opts.port || VmMigrationClient.port;
    opts = Object.assign({ servicePath, port, clientConfig: {}, fallback: false }, opts);
    if (servicePath !== VmMigrationClient.servicePath && !("scopes" in opts)) {
      opts.scopes = VmMigrationClient.scopes;
    }
    this._terminated = false;
    this._gaxModule = gax;
    this._gaxGrpc = new gax.GrpcClient(opts);
    this._opts = opts;
    this.auth = this._gaxGrpc.auth;
    this.auth.useJWTAccessWithScope = true;
    this.auth.defaultServicePath = VmMigrationClient.servicePath;
    const clientHeader = [
      `gax/${gax.version}`,
      "gapic/interop",
      `gl-node/${process.versions.node}`,
      `grpc/${this._gaxGrpc.grpcVersion}`,
    ];

    const jsonProtos = loadJsonProtos();
    this._protos = this._gaxGrpc.loadProtoJSON(jsonProtos);
    this.pathTemplates = {
      cloneJobPathTemplate: new gax.PathTemplate(
        "projects/{project}/locations/{location}/sources/{source}/migratingVms/{migrating_vm}/cloneJobs/{clone_job}",
      ),
    };
    this.descriptors = { page: {}, stream: {}, longrunning: {}, batching: {} };
    this.descriptors.page = {
      listSources: new gax.PageDescriptor("pageToken", "nextPageToken", "sources"),
      listCloneJobs: new gax.PageDescriptor("pageToken", "nextPageToken", "cloneJobs"),
    };

    const protoFilesRoot = gax.protobuf.Root.fromJSON(jsonProtos);
    this.protoFilesRoot = protoFilesRoot;
    const lroOptions = { auth: this.auth, grpc: this._gaxGrpc.grpc };
    this.operationsClient = gax.lro(lroOptions).operationsClient(opts);
    const type = (name) => protoFilesRoot.lookup(name);
    const cloneJob = type(".google.cloud.vmmigration.v1.CloneJob");
    const cancelResponse = type(".google.cloud.vmmigration.v1.CancelCloneJobResponse");
    const metadata = type(".google.cloud.vmmigration.v1.OperationMetadata");
    this.descriptors.longrunning = {
      createCloneJob: new gax.LongrunningDescriptor(
        this.operationsClient,
        cloneJob.decode.bind(cloneJob),
        metadata.decode.bind(metadata),
      ),
      cancelCloneJob: new gax.LongrunningDescriptor(
        this.operationsClient,
        cancelResponse.decode.bind(cancelResponse),
        metadata.decode.bind(metadata),
      ),
    };
    this._defaults = this._gaxGrpc.constructSettings(
      "google.cloud.vmmigration.v1.VmMigration",
      GAPIC_CONFIG,
      opts.clientConfig || {},
      { "x-goog-api-client": clientHeader.join(" ") },
    );
    this.innerApiCalls = {};
  }

  initialize() {
    if (this.vmMigrationStub) return this.vmMigrationStub;
    this.vmMigrationStub = this._gaxGrpc.createStub(
      this._protos.google.cloud.vmmigration.v1.VmMigration,
      this._opts,
      this._providedCustomServicePath,
    );
    for (const methodName of ["listSources", "createCloneJob", "cancelCloneJob", "listCloneJobs", "getCloneJob"]) {
      const callPromise = this.vmMigrationStub.then(
        (stub) =>
          (...args) => {
            if (this._terminated) return Promise.reject("The client has already been closed.");
            return stub[methodName].apply(stub, args);
          },
        (err) => () => {
          throw err;
        },
      );
      const descriptor =
        this.descriptors.page[methodName] || this.descriptors.longrunning[methodName] || undefined;
      this.innerApiCalls[methodName] = gax.createApiCall(
        callPromise,
        this._defaults[methodName],
        descriptor,
        this._opts.fallback,
      );
    }
    return this.vmMigrationStub;
  }

  /** options.otherArgs.headers['x-goog-request-params'] as the generated methods set it. */
  _routed(options, params) {
    options = options || {};
    options.otherArgs = options.otherArgs || {};
    options.otherArgs.headers = options.otherArgs.headers || {};
    options.otherArgs.headers["x-goog-request-params"] = gax.routingHeader.fromParams(params);
    return options;
  }

  getCloneJob(request = {}, options) {
    options = this._routed(options, { name: request.name ?? "" });
    this.initialize();
    return this.innerApiCalls.getCloneJob(request, options);
  }

  createCloneJob(request = {}, options) {
    options = this._routed(options, { parent: request.parent ?? "" });
    this.initialize();
    return this.innerApiCalls.createCloneJob(request, options);
  }

  cancelCloneJob(request = {}, options) {
    options = this._routed(options, { name: request.name ?? "" });
    this.initialize();
    return this.innerApiCalls.cancelCloneJob(request, options);
  }

  listCloneJobs(request = {}, options) {
    options = this._routed(options, { parent: request.parent ?? "" });
    this.initialize();
    return this.innerApiCalls.listCloneJobs(request, options);
  }

  listCloneJobsAsync(request = {}, options) {
    options = this._routed(options, { parent: request.parent ?? "" });
    const callSettings = this._defaults.listCloneJobs.merge(options);
    this.initialize();
    return this.descriptors.page.listCloneJobs.asyncIterate(
      this.innerApiCalls.listCloneJobs,
      request,
      callSettings,
    );
  }

  listSources(request = {}, options) {
    options = this._routed(options, { parent: request.parent ?? "" });
    this.initialize();
    return this.innerApiCalls.listSources(request, options);
  }

  close() {
    if (this.vmMigrationStub && !this._terminated) {
      return this.vmMigrationStub.then((stub) => {
        this._terminated = true;
        stub.close();
        this.operationsClient.close();
      });
    }
    return Promise.resolve();
  }
}

// -- helpers --

/** Call options: a deadline per call, and LRO polling bounded for a test. */
function callOptions() {
  return {
    timeout: RPC_TIMEOUT_MS,
    longrunning: gax.createBackoffSettings(100, 1.3, 1000, null, null, null, RPC_TIMEOUT_MS),
  };
}

/**
 * A state by name. The LRO responses are protobufjs messages decoded by the
 * descriptors (enums as numbers); the unary responses come through
 * proto-loader's options (enums as strings).
 */
function stateName(client, state) {
  if (typeof state === "string") return state;
  const states = client.protoFilesRoot.lookupEnum(".google.cloud.vmmigration.v1.CloneJob.State");
  return states.valuesById[state] ?? String(state);
}

/** The target oneof of a job: which of the two it has. */
function targetOf(job) {
  if (job.computeEngineTargetDetails) return "computeEngineTargetDetails";
  if (job.computeEngineDisksTargetDetails) return "computeEngineDisksTargetDetails";
  return "none";
}

async function getJob(client, name) {
  const [job] = await client.getCloneJob({ name }, callOptions());
  return job;
}

/** Poll getCloneJob until `until(state)`; the last job seen. */
async function pollJob(client, name, until, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  const states = [];
  for (;;) {
    const job = await getJob(client, name);
    if (states.at(-1) !== job.state) states.push(job.state);
    if (until(job.state)) return { job, states };
    if (Date.now() >= deadline) {
      throw new CheckError(`${name} still ${job.state} after ${timeoutMs} ms (saw ${states.join(" → ")})`);
    }
    await sleep(POLL_MS);
  }
}

/** The rejection of a call that must fail. */
async function callError(label, call) {
  try {
    await call();
  } catch (error) {
    return error;
  }
  throw new CheckError(`${label} succeeded, expected an error`);
}

function describeError(error) {
  return `code ${error?.code} (${error?.details ?? error?.message ?? error})`;
}

/** The type name of a decoded google.rpc detail (protobufjs message). */
function detailType(detail) {
  return detail?.$type?.fullName?.replace(/^\./, "") ?? detail?.constructor?.name ?? "?";
}

function vmTarget(vmName) {
  return {
    computeEngineTargetDetails: { vmName, zone: "us-central1-a", machineType: "n2-standard-2" },
  };
}

function disksTarget() {
  return { computeEngineDisksTargetDetails: {} };
}

/** The project and location of a migrating VM name. */
function locationOf(parent) {
  const match = /^projects\/([^/]+)\/locations\/([^/]+)\//.exec(parent);
  check(match, `PARENT ${parent} is not a migrating VM name`);
  return { project: match[1], location: match[2] };
}

// -- the checks --

/** One createCloneJob, its operation and its result checked. */
async function createOne(client, parent, id, cloneJob, requestId) {
  const name = `${parent}/cloneJobs/${id}`;
  const [operation] = await client.createCloneJob(
    { parent, cloneJobId: id, cloneJob, requestId },
    callOptions(),
  );
  const { project, location } = locationOf(parent);
  const match = OPERATION_NAME.exec(operation.name ?? "");
  check(match, `operation name ${operation.name} is not projects/*/locations/*/operations/operation-{ms}-{hex}`);
  check(
    match[1] === project && match[2] === location,
    `operation ${operation.name} is not in projects/${project}/locations/${location}`,
  );
  check(operation.done === true, `the create operation is not done at once (done ${operation.done})`);
  const metadata = operation.metadata;
  check(metadata, "the create operation has no metadata");
  check(metadata.verb === "create", `metadata.verb ${JSON.stringify(metadata.verb)}, expected "create"`);
  check(metadata.target === name, `metadata.target ${metadata.target}, expected ${name}`);
  check(metadata.apiVersion === "v1", `metadata.apiVersion ${JSON.stringify(metadata.apiVersion)}, expected "v1"`);
  check(metadata.createTime && metadata.endTime, "metadata without createTime and endTime");
  const [job] = await operation.promise();
  check(job?.name === name, `operation.promise() gave ${job?.name}, expected ${name}`);
  check(job.name.endsWith(`/cloneJobs/${id}`), `job name ${job.name} does not end with the id`);
  const state = stateName(client, job.state);
  check(state === "PENDING", `the created job is ${state}, expected PENDING`);
  check(targetOf(job) === Object.keys(cloneJob)[0], `the created job has target ${targetOf(job)}`);
  return { name, id, operation: operation.name, requestId, cloneJob, target: targetOf(job) };
}

/** create: a VM target and a disks target; the first job runs, the second waits. */
async function checkCreate(client, parent) {
  const vmId = uniqueId("gvm");
  const vm = await createOne(client, parent, vmId, vmTarget(vmId), randomUUID());
  const disks = await createOne(client, parent, uniqueId("gdisks"), disksTarget(), randomUUID());
  return {
    jobs: [vm, disks],
    line: `${vm.id} (VM) and ${disks.id} (disks) PENDING; ops ${vm.operation.split("/").at(-1)}, ${disks.operation
      .split("/")
      .at(-1)}; metadata verb create, target the job, apiVersion v1`,
  };
}

/** retry: the same request with the same requestId: the same operation, the same job. */
async function checkRetry(client, parent, first) {
  const [operation] = await client.createCloneJob(
    { parent, cloneJobId: first.id, cloneJob: first.cloneJob, requestId: first.requestId },
    callOptions(),
  );
  check(operation.name === first.operation, `operation ${operation.name}, expected ${first.operation}`);
  const [job] = await operation.promise();
  check(job?.name === first.name, `the retry gave job ${job?.name}, expected ${first.name}`);
  return `requestId ${first.requestId} → ${operation.name.split("/").at(-1)} again`;
}

/** get: getCloneJob returns the first job. */
async function checkGet(client, first) {
  const job = await getJob(client, first.name);
  check(job.name === first.name, `getCloneJob returned ${job.name}`);
  check(targetOf(job) === first.target, `target ${targetOf(job)}, expected ${first.target}`);
  const vmName = job.computeEngineTargetDetails?.vmName;
  check(vmName === first.id, `computeEngineTargetDetails.vmName ${vmName}, expected ${first.id}`);
  check(job.createTime?.seconds, "the job has no createTime");
  return `${job.name.split("/").at(-1)} ${job.state}, vmName ${vmName}`;
}

/** list: pageSize 1, page by page and through the async iterator. */
async function checkList(client, parent, jobs) {
  const wanted = jobs.map((j) => j.name);
  const paged = [];
  let request = { parent, pageSize: 1 };
  let pages = 0;
  while (request) {
    check(pages < 100, "more than 100 pages of pageSize 1");
    const [page, next, raw] = await client.listCloneJobs(request, { ...callOptions(), autoPaginate: false });
    pages += 1;
    check(page.length <= 1, `page ${pages} holds ${page.length} jobs with pageSize 1`);
    check(next === null || raw.nextPageToken, `page ${pages}: a next request without nextPageToken`);
    paged.push(...page.map((j) => j.name));
    request = next;
  }
  const missing = wanted.filter((n) => !paged.includes(n));
  check(missing.length === 0, `${pages} pages lack ${missing.join(", ")} (got ${paged.join(", ")})`);
  check(new Set(paged).size === paged.length, `a job on two pages: ${paged.join(", ")}`);
  const iterated = [];
  // autoPaginate false, or google-gax warns that async iteration pages by itself anyway.
  const iterating = { ...callOptions(), autoPaginate: false };
  for await (const job of client.listCloneJobsAsync({ parent, pageSize: 1 }, iterating)) {
    iterated.push(job.name);
    check(iterated.length <= 100, "the iterator gave over 100 jobs");
  }
  const notIterated = wanted.filter((n) => !iterated.includes(n));
  check(notIterated.length === 0, `listCloneJobsAsync lacks ${notIterated.join(", ")}`);
  return `${pages} pages of pageSize 1 and listCloneJobsAsync found all ${wanted.length} jobs`;
}

/** cancel: a hold- job in ADAPTING_OS, cancelled through the cancel operation. */
async function checkCancel(client, parent) {
  // A VM target: a disks-only clone has no adapting_os step to hold in.
  const id = uniqueId("hold");
  const held = await createOne(client, parent, id, vmTarget(id), randomUUID());
  const { states } = await pollJob(
    client,
    held.name,
    (s) => s === "ADAPTING_OS" || TERMINAL.has(s),
    HOLD_TIMEOUT_MS,
  );
  const reached = states.at(-1);
  check(reached === "ADAPTING_OS", `the hold- job went to ${reached}: no hold fault plan?`);
  const [operation] = await client.cancelCloneJob({ name: held.name }, callOptions());
  check(OPERATION_NAME.test(operation.name ?? ""), `cancel operation name ${operation.name}`);
  const metadata = operation.metadata;
  check(metadata, "the cancel operation has no metadata");
  check(metadata.verb === "cancel", `metadata.verb ${JSON.stringify(metadata.verb)}, expected "cancel"`);
  check(metadata.target === held.name, `metadata.target ${metadata.target}, expected ${held.name}`);
  check(metadata.requestedCancellation === true, "metadata.requestedCancellation is not true");
  const wasDone = operation.done;
  const [response, finalMetadata] = await operation.promise();
  const responseType = detailType(response);
  check(
    responseType === "google.cloud.vmmigration.v1.CancelCloneJobResponse",
    `operation.promise() gave ${responseType}, expected CancelCloneJobResponse`,
  );
  check(finalMetadata?.endTime, "the done cancel operation's metadata has no endTime");
  const job = await getJob(client, held.name);
  check(job.state === "CANCELLED", `after the cancel operation the job is ${job.state}, expected CANCELLED`);
  return (
    `${held.id}: ${states.join(" → ")}; cancel op ${operation.name.split("/").at(-1)} ` +
    `(done at once: ${wasDone}) resolved; job CANCELLED`
  );
}

/** succeeded: the first jobs reach SUCCEEDED. */
async function checkSucceeded(client, jobs) {
  const lines = [];
  for (const created of jobs) {
    const { job, states } = await pollJob(client, created.name, (s) => TERMINAL.has(s), RUN_TIMEOUT_MS);
    check(
      job.state === "SUCCEEDED",
      `${created.id} ended ${job.state} (${job.error?.message ?? "no error"}), expected SUCCEEDED`,
    );
    lines.push(`${created.id} ${states.join(" → ")}`);
  }
  return lines.join("; ");
}

/** error: a bad vm_name is INVALID_ARGUMENT, with reason and BadRequest reachable. */
async function checkError(client, parent) {
  const id = uniqueId("bad");
  const error = await callError("createCloneJob with a bad vmName", () =>
    client.createCloneJob(
      { parent, cloneJobId: id, cloneJob: vmTarget("../../not a vm name") },
      callOptions(),
    ),
  );
  check(error.code === gax.Status.INVALID_ARGUMENT, `${describeError(error)}, expected 3 INVALID_ARGUMENT`);
  check(error.reason === "INVALID_ARGUMENT", `error.reason ${error.reason}, expected INVALID_ARGUMENT`);
  const details = error.statusDetails ?? [];
  const types = details.map(detailType);
  const bad = details.filter((d) => detailType(d) === "google.rpc.BadRequest");
  check(bad.length === 1, `statusDetails ${types.join(", ") || "(none)"}: expected one google.rpc.BadRequest`);
  const fields = bad[0].fieldViolations.map((v) => v.field);
  check(fields.includes(BAD_FIELD), `BadRequest fields ${fields.join(", ")}; expected ${BAD_FIELD}`);
  return `code ${error.code}, reason ${error.reason} (domain ${error.domain}), BadRequest ${fields.join(", ")}`;
}

/** unimplemented: a VmMigration method the server does not serve. */
async function checkUnimplemented(client, parent) {
  const { project, location } = locationOf(parent);
  const error = await callError("listSources", () =>
    client.listSources({ parent: `projects/${project}/locations/${location}` }, callOptions()),
  );
  check(error.code === gax.Status.UNIMPLEMENTED, `${describeError(error)}, expected 12 UNIMPLEMENTED`);
  check(/ListSources/.test(error.details ?? error.message), `the message does not name ListSources: ${error.details}`);
  return `code ${error.code}: ${error.details}`;
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
    // A failed check has a message; a gRPC error its code and details; anything else its stack.
    let reason;
    if (error instanceof CheckError) reason = error.message;
    else if (error && typeof error.code === "number") reason = `${describeError(error)}${error.reason ? ` reason ${error.reason}` : ""}`;
    else reason = error?.stack ?? String(error);
    fail(label, reason);
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
    console.error("usage: node google_client.mjs ADDRESS PARENT");
    return 2;
  }
  const colon = address.lastIndexOf(":");
  const host = address.slice(0, colon).replace(/^\[(.*)\]$/, "$1");
  const port = Number(address.slice(colon + 1));
  const client = new VmMigrationClient({
    servicePath: host,
    port,
    sslCreds: grpc.credentials.createInsecure(),
    universeDomain: "googleapis.com",
  });
  try {
    const created = await run("create: createCloneJob operations, a VM and a disks target", () =>
      checkCreate(client, parent),
    );
    const first = created?.jobs[0];
    await runAfter(created, "retry: the same requestId", () => checkRetry(client, parent, first));
    await runAfter(created, "get: getCloneJob", () => checkGet(client, first));
    await runAfter(created, "list: listCloneJobs, pageSize 1", () => checkList(client, parent, created.jobs));
    await run("cancel: a hold- job through cancelCloneJob's operation", () => checkCancel(client, parent));
    await runAfter(created, "succeeded: the created jobs", () => checkSucceeded(client, created.jobs));
    await run("error: a bad vmName", () => checkError(client, parent));
    await run("unimplemented: listSources", () => checkUnimplemented(client, parent));
  } finally {
    await client.close();
    console.log(`${results.passed} passed, ${results.failed} failed`);
  }
  return results.failed === 0 ? 0 : 1;
}

process.exitCode = await main();
