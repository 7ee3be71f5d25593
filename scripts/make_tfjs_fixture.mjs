// Reference outputs of TFJS graph models, computed by @tensorflow/tfjs (pure-JS CPU backend).
//
// How to run (normally through scripts/make_tfjs_fixture.py, which writes the input JSON,
// calls this script and packs tests/fixtures/tfjs_reference.npz):
//   mkdir -p /tmp/tfjsref && cd /tmp/tfjsref && npm init -y && npm install @tensorflow/tfjs@4.22.0
//   TFJS_DIR=/tmp/tfjsref node scripts/make_tfjs_fixture.mjs job.json result.json
//
// job.json:    {"models": [{"key": "faceres", "json": "/path/faceres.json",
//                "outputs": ["global_pooling/Mean", ...],
//                "input": {"shape": [N, H, W, 3], "data": [... N*H*W*3 numbers ...]}}]}
// result.json: {"tfjs_version": "...", "backend": "cpu",
//               "models": {"faceres": {"global_pooling/Mean": {"shape": [...], "data": [...]}}}}
// The input is NHWC float32 exactly as the graph expects it; the model is run one image at
// a time (batch 1), which is how human runs these models.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const tfjsDir = process.env.TFJS_DIR || '/tmp/tfjsref';
const require = createRequire(path.join(tfjsDir, 'package.json'));
const tf = require('@tensorflow/tfjs');

function fileHandler(jsonPath) {
  // A minimal tf.io.IOHandler reading model.json and its weight shards from disk.
  return {
    load: async () => {
      const spec = JSON.parse(fs.readFileSync(jsonPath, 'utf8'));
      const dir = path.dirname(jsonPath);
      const specs = [];
      const bufs = [];
      for (const group of spec.weightsManifest) {
        for (const p of group.paths) bufs.push(fs.readFileSync(path.join(dir, p)));
        specs.push(...group.weights);
      }
      const all = Buffer.concat(bufs);
      const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
      return {
        modelTopology: spec.modelTopology,
        format: spec.format,
        generatedBy: spec.generatedBy,
        convertedBy: spec.convertedBy,
        signature: spec.signature,
        userDefinedMetadata: spec.userDefinedMetadata,
        weightSpecs: specs,
        weightData,
      };
    },
  };
}

async function main() {
  const [jobPath, outPath] = process.argv.slice(2);
  if (!jobPath || !outPath) throw new Error('usage: node make_tfjs_fixture.mjs job.json result.json');
  await tf.setBackend('cpu');
  await tf.ready();
  const job = JSON.parse(fs.readFileSync(jobPath, 'utf8'));
  const result = { tfjs_version: tf.version.tfjs, backend: tf.getBackend(), models: {} };
  for (const m of job.models) {
    const model = await tf.loadGraphModel(fileHandler(m.json));
    const [n, h, w, c] = m.input.shape;
    const per = h * w * c;
    const acc = Object.fromEntries(m.outputs.map((o) => [o, { shape: null, data: [] }]));
    for (let i = 0; i < n; i++) {
      const x = tf.tensor4d(Float32Array.from(m.input.data.slice(i * per, (i + 1) * per)), [1, h, w, c]);
      let ys = model.execute(x, m.outputs);
      if (!Array.isArray(ys)) ys = [ys];
      m.outputs.forEach((o, k) => {
        acc[o].shape = [n, ...ys[k].shape.slice(1)];
        acc[o].data.push(...ys[k].dataSync());
      });
      tf.dispose([x, ...ys]);
    }
    result.models[m.key] = acc;
    model.dispose();
  }
  const tmp = `${outPath}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(result));
  fs.renameSync(tmp, outPath);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
