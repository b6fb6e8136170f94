// Loads a GGUF file in llama.cpp (node-llama-cpp, prebuilt CPU binary), tokenizes a text and
// greedy-generates from BOS; prints one JSON line for tests/stages/test_export.cpp to compare with
// dsk. Usage:
//   node llama_cpp_check.mjs NODE_LLAMA_CPP_DIR MODEL.gguf TEXT MAX_NEW_TOKENS [CASES.inp]
// CASES.inp (optional): llama.cpp's tokenizer conformance inputs (entries each followed by
// "\n__ggml_vocab_test__\n"); their ids go to "ids_many", one list per entry.
// NODE_LLAMA_CPP_DIR holds node_modules/node-llama-cpp (scripts/setup installs it under
// .cache/node-llama-cpp). Exit 3 when the package is missing there, 1 on any llama.cpp failure.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [dir, modelPath, text, maxArg, casesPath] = process.argv.slice(2);
if (!dir || !modelPath || text === undefined) {
  console.error("usage: node llama_cpp_check.mjs NODE_LLAMA_CPP_DIR MODEL.gguf TEXT [MAX_NEW_TOKENS]");
  process.exit(2);
}
const entry = join(dir, "node_modules", "node-llama-cpp", "dist", "index.js");
if (!existsSync(entry)) {
  console.error(`node-llama-cpp is not installed: ${entry} is missing (run scripts/setup)`);
  process.exit(3);
}
const maxNew = Number(maxArg ?? 64);

const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);
// Prebuilt CPU binary only: never build from source, never download.
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: 2 });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const ids = model.tokenize(text);                 // no BOS: llama.cpp adds it only at evaluation
const bos = model.tokens.bos;
const eos = model.tokens.eos;
const context = await model.createContext({ contextSize: Math.min(512, model.trainContextSize), threads: 2 });
const sequence = context.getSequence();

const generated = [];
if (maxNew > 0) {
  for await (const token of sequence.evaluate([bos], { temperature: 0 })) {
    if (token === eos) break;
    generated.push(token);
    if (generated.length >= maxNew) break;
  }
}
let idsMany;
if (casesPath) {
  const sep = "\n__ggml_vocab_test__\n";
  const all = readFileSync(casesPath, "utf8");
  const entries = all.split(sep);
  entries.pop();  // what follows the last separator (empty)
  idsMany = entries.map((e) => Array.from(model.tokenize(e)));
}
const out = {
  ids,
  bos,
  eos,
  generated,
  generated_text: model.detokenize(generated),
  file_type: model.fileInfo?.metadata?.general?.file_type,
  ids_many: idsMany,
};
console.log(JSON.stringify(out));
await context.dispose();
await model.dispose();
await llama.dispose();
