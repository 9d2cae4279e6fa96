// Validate Prometheus Operator resources (ServiceMonitor, PrometheusRule)
// against the operator's schemas, offline: the npm package
// @kubernetes-models/prometheus-operator carries them, generated from the
// operator's Go types (scripts/setup installs it under .tools/node).
// Usage: node validate-crds.mjs FILE... (multi-document YAML; other kinds are
// skipped). Prints one line per resource; exits 1 on the first invalid one.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(process.env.NODE_TOOLS + "/");
const yaml = require("js-yaml");
const { ServiceMonitor, PrometheusRule } = await import(
  process.env.NODE_TOOLS + "/node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js"
);
const models = { ServiceMonitor, PrometheusRule };

let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    const Model = doc && doc.apiVersion === "monitoring.coreos.com/v1" && models[doc.kind];
    if (!Model) continue;
    try {
      new Model(doc).validate();
    } catch (e) {
      console.error(`${file}: ${doc.kind}/${doc.metadata?.name}: ${e.message}`);
      process.exit(1);
    }
    console.log(`${file}: ${doc.kind}/${doc.metadata.name} valid`);
    checked++;
  }
}
if (checked === 0) {
  console.error("no Prometheus Operator resource found");
  process.exit(1);
}
