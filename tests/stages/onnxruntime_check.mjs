// Runs a dsk ONNX export in ONNX Runtime (onnxruntime-node, CPU) for tests/stages/test_export_onnx.cpp.
// Usage:
//   node onnxruntime_check.mjs ONNXRUNTIME_NODE_DIR MODEL.onnx JOB.json
// JOB.json is one of
//   {"mode": "logits", "runs": [{"batch": B, "sequence": T, "ids": [B*T ids, row-major]}, ...],
//    "out": "PREFIX"}
//       runs each batch through the model (past of length 0 when it has KV inputs) and writes the
//       logits [B, T, V] as raw little-endian float32 to PREFIX.<run index>.f32
//   {"mode": "generate", "prompt": [ids], "max_new": N, "eos": ID, "kv_heads": KV, "head_dim": D,
//    "cache_type": "float32"|"float16"}
//       greedy decoding with the KV cache: prefill on the prompt with empty pasts, then one token at
//       a time feeding present.* back as past_key_values.*; argmax takes the lowest id on ties (as
//       dsk generate); stops at eos (not returned) or after N tokens
// Prints one JSON line: inputs, outputs, and per run the logits shape (logits) or the tokens (generate).
// ONNXRUNTIME_NODE_DIR holds node_modules/onnxruntime-node (scripts/setup installs it under
// .cache/onnxruntime-node). Exit 3 when the package is missing there, 1 on any ONNX Runtime failure.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [dir, modelPath, jobPath] = process.argv.slice(2);
if (!dir || !modelPath || !jobPath) {
  console.error("usage: node onnxruntime_check.mjs ONNXRUNTIME_NODE_DIR MODEL.onnx JOB.json");
  process.exit(2);
}
const entry = join(dir, "node_modules", "onnxruntime-node", "dist", "index.js");
if (!existsSync(entry)) {
  console.error(`onnxruntime-node is not installed: ${entry} is missing (run scripts/setup)`);
  process.exit(3);
}
const mod = await import(pathToFileURL(entry).href);
const ort = mod.default ?? mod;
const job = JSON.parse(readFileSync(jobPath, "utf8"));
const session = await ort.InferenceSession.create(modelPath, {
  executionProviders: ["cpu"],
  intraOpNumThreads: 2,
  interOpNumThreads: 1,
  graphOptimizationLevel: "all",
});
const pastNames = session.inputNames.filter((n) => n.startsWith("past_key_values."));

function ids64(ids, shape) {
  return new ort.Tensor("int64", BigInt64Array.from(ids.map((x) => BigInt(x))), shape);
}

function emptyPast(batch, type, kv, d) {
  const data = type === "float16" ? new Uint16Array(0) : new Float32Array(0);
  return new ort.Tensor(type, data, [batch, kv, 0, d]);
}

const result = { inputs: session.inputNames, outputs: session.outputNames, runs: [] };
if (job.mode === "logits") {
  for (let i = 0; i < job.runs.length; ++i) {
    const run = job.runs[i];
    const feeds = { input_ids: ids64(run.ids, [run.batch, run.sequence]) };
    for (const name of pastNames) feeds[name] = emptyPast(run.batch, job.cache_type ?? "float32", job.kv_heads, job.head_dim);
    const out = await session.run(feeds);
    const logits = out.logits;
    if (logits.type !== "float32") throw new Error(`logits are ${logits.type}, expected float32`);
    writeFileSync(`${job.out}.${i}.f32`, Buffer.from(logits.data.buffer, logits.data.byteOffset, logits.data.byteLength));
    result.runs.push({ logits: logits.dims });
  }
} else if (job.mode === "generate") {
  const tokens = [];
  let feeds = { input_ids: ids64(job.prompt, [1, job.prompt.length]) };
  for (const name of pastNames) feeds[name] = emptyPast(1, job.cache_type, job.kv_heads, job.head_dim);
  let pastLength = 0;
  while (tokens.length < job.max_new) {
    const out = await session.run(feeds);
    const [, T, V] = out.logits.dims;
    const last = out.logits.data.subarray((T - 1) * V, T * V);
    let best = 0;
    for (let v = 1; v < V; ++v) if (last[v] > last[best]) best = v;
    pastLength += T;
    const present = out["present.0.key"];
    if (present && present.dims[2] !== pastLength)
      throw new Error(`present.0.key has ${present.dims[2]} positions, expected ${pastLength}`);
    if (best === job.eos) break;
    tokens.push(best);
    feeds = { input_ids: ids64([best], [1, 1]) };
    for (const name of pastNames) feeds[name] = out[name.replace("past_key_values.", "present.")];
  }
  result.runs.push({ tokens, past_length: pastLength });
} else {
  throw new Error(`unknown mode ${job.mode}`);
}
console.log(JSON.stringify(result));
