// Validate Prometheus Operator resources (ServiceMonitor, PrometheusRule,
// AlertmanagerConfig) and KEDA's ScaledObject against their schemas, offline:
// the npm packages @kubernetes-models/prometheus-operator and
// @kubernetes-models/keda carry them, generated from the projects' CRDs
// (scripts/setup installs them under .tools/node).
// Usage: node validate-crds.mjs FILE... (multi-document YAML; other kinds are
// skipped). Prints one line per resource; exits 1 on the first invalid one.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(process.env.NODE_TOOLS + "/");
const yaml = require("js-yaml");
const { ServiceMonitor, PrometheusRule } = await import(
  process.env.NODE_TOOLS + "/node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js"
);
const v1alpha1 = process.env.NODE_TOOLS + "/node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1alpha1/index.js";
const { AlertmanagerConfig, Route } = await import(v1alpha1);
const { ScaledObject } = await import(
  process.env.NODE_TOOLS + "/node_modules/@kubernetes-models/keda/keda.sh/v1alpha1/index.js"
);
const models = {
  "monitoring.coreos.com/v1": { ServiceMonitor, PrometheusRule },
  "monitoring.coreos.com/v1alpha1": { AlertmanagerConfig },
  "keda.sh/v1alpha1": { ScaledObject },
};

// The schema leaves an AlertmanagerConfig's child routes free-form JSON; the
// operator reads them as routes, so check them as such.
function validateRoutes(route) {
  for (const child of route?.routes ?? []) {
    new Route(child).validate();
    validateRoutes(child);
  }
}

let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    const Model = doc && models[doc.apiVersion]?.[doc.kind];
    if (!Model) continue;
    try {
      new Model(doc).validate();
      if (doc.kind === "AlertmanagerConfig") validateRoutes(doc.spec.route);
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
