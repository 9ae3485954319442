// A Node.js client of landmarks.v1, written from the .proto as docs/clients.md shows it, run against a real
// server by tests/serving/test_node_client.py:
//
//   node tests/node/client.mjs HOST:PORT protos/landmarks/v1/landmarks.proto IMAGE.png ADAPTER.safetensors
//
// Prints one line per check and exits 1 if any failed.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const [address, protoPath, imagePath, adapterPath] = process.argv.slice(2);

// keepCase: field names as in the .proto (adapter_sha256, not adapterSha256); enums: String (state "READY");
// longs: String (int64 size_bytes and cache counters exactly); defaults: unset fields present (0, "", []);
// oneofs: the name of the field set (image: "encoded")
const LOADER = { keepCase: true, enums: String, longs: String, defaults: true, oneofs: true };
const landmarks = grpc.loadPackageDefinition(protoLoader.loadSync(protoPath, LOADER)).landmarks.v1;

// grpc.health.v1 (any gRPC health checker speaks it)
const healthProto = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "health-")), "health.proto");
fs.writeFileSync(healthProto, `syntax = "proto3"; package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse { enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1; }
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }`);
const health = grpc.loadPackageDefinition(protoLoader.loadSync(healthProto, LOADER)).grpc.health.v1;

// google.rpc.Status and the two details the server sends, to read the grpc-status-details-bin trailer
const rpc = protobuf.parse(`syntax = "proto3"; package google.rpc;
message Any { string type_url = 1; bytes value = 2; }
message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
message BadRequest { message FieldViolation { string field = 1; string description = 2; string reason = 3; }
  repeated FieldViolation field_violations = 1; }`, { keepCase: true }).root;

function errorDetails(err) {
  const [bin] = err.metadata?.get("grpc-status-details-bin") ?? [];
  if (!bin) return {};
  const status = rpc.lookupType("google.rpc.Status").decode(bin);
  const out = {};
  for (const any of status.details) {
    const name = any.type_url.split("/").pop(); // "google.rpc.ErrorInfo"
    if (name === "google.rpc.ErrorInfo" || name === "google.rpc.BadRequest") {
      out[name.split(".").pop()] = rpc.lookupType(name).toObject(rpc.lookupType(name).decode(any.value));
    }
  }
  return out;
}

const credentials = grpc.credentials.createInsecure();
const inference = new landmarks.LandmarkService(address, credentials);
const admin = new landmarks.AdminService(address, credentials);
const checker = new health.Health(address, credentials);
const call = (client, method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, { deadline: Date.now() + 30000 }, (err, reply) => (err ? reject(err) : resolve(reply))));
const fail = (client, method, request) =>
  call(client, method, request).then(
    () => { throw new Error(`${method} succeeded`); },
    (err) => err);

let failed = 0;
async function check(name, body) {
  try {
    await body();
    console.log(`ok   ${name}`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${name}: ${err.stack || err}`);
  }
}
function expect(condition, what) {
  if (!condition) throw new Error(what);
}

const image = fs.readFileSync(imagePath);

await check("health", async () => {
  const reply = await call(checker, "Check", { service: "landmarks.v1.LandmarkService" });
  expect(reply.status === "SERVING", JSON.stringify(reply));
});

await check("Detect", async () => {
  const reply = await call(inference, "Detect", { image: { encoded: image }, category: "cats" });
  expect(reply.category === "cats" && reply.landmarks.length === 4, JSON.stringify(reply));
  expect(typeof reply.landmarks[0].x === "number" && reply.adapter_sha256.length === 64, "fields");
});

await check("DetectBatch", async () => {
  const reply = await call(inference, "DetectBatch", {
    requests: [{ image: { encoded: image }, category: "cats" }, { image: { encoded: image }, category: "faces" }],
  });
  expect(reply.responses.map((r) => r.landmarks.length).join() === "4,6", JSON.stringify(reply));
});

await check("a bad DetectBatch item's index and field, from the error details", async () => {
  const err = await fail(inference, "DetectBatch", {
    requests: [{ image: { encoded: image }, category: "cats" }, { image: { encoded: Buffer.from("not an image") },
                                                                  category: "cats" }],
  });
  const { ErrorInfo, BadRequest } = errorDetails(err);
  expect(err.code === grpc.status.INVALID_ARGUMENT, `code ${err.code}`);
  expect(ErrorInfo.reason === "IMAGE_UNDECODABLE" && ErrorInfo.domain === "landmarks.v1", JSON.stringify(ErrorInfo));
  expect(ErrorInfo.metadata.index === "1", JSON.stringify(ErrorInfo));
  expect(BadRequest.field_violations[0].field === "requests[1].image.encoded", JSON.stringify(BadRequest));
});

await check("an unknown category", async () => {
  const err = await fail(inference, "Detect", { image: { encoded: image }, category: "zebras" });
  const { ErrorInfo } = errorDetails(err);
  expect(err.code === grpc.status.NOT_FOUND && ErrorInfo.reason === "CATEGORY_NOT_FOUND", err.details);
});

await check("register, detect, unregister", async () => {
  const data = fs.readFileSync(adapterPath);
  const registered = await call(admin, "RegisterAdapter", { category: "birds", version: "v1", data });
  expect(registered.created && registered.category.state === "READY", JSON.stringify(registered.category));
  expect(typeof registered.category.versions[0].size_bytes === "string", "int64 as a string (longs: String)");
  const reply = await call(inference, "Detect", { image: { encoded: image }, category: "birds" });
  expect(reply.version === "v1" && reply.landmarks.length === 3, JSON.stringify(reply));
  const removed = await call(admin, "UnregisterAdapter", { category: "birds" });
  expect(removed.removed_versions.join() === "v1", JSON.stringify(removed));
});

await check("ServerInfo", async () => {
  const info = await call(admin, "ServerInfo", {});
  expect(info.ready === true && info.api_version === "landmarks.v1", JSON.stringify(info));
  expect(typeof info.cache.hits === "string", "cache counters as strings (longs: String)");
});

for (const client of [inference, admin, checker]) client.close();
process.exit(failed ? 1 : 0);
