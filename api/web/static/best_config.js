// The best trial's configuration as a YAML snippet, to paste into a spec's `hparams:` as fixed values.

/** A scalar as YAML that reads back as the same value and type (PyYAML, YAML 1.1 included). */
export function yamlScalar(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") {
    if (!Number.isFinite(value)) return value > 0 ? ".inf" : value < 0 ? "-.inf" : ".nan";
    const text = String(value);
    // YAML 1.1 (PyYAML) reads 1e-05 as a string: its floats need a dot before the exponent.
    return /e/i.test(text) && !text.includes(".") ? text.replace(/e/i, ".0e") : text;
  }
  const text = String(value);
  const plain = /^[A-Za-z_][A-Za-z0-9_.\/-]*$/.test(text)
    && !/^(true|false|yes|no|on|off|null|y|n|~)$/i.test(text);
  return plain ? text : JSON.stringify(text); // a JSON string is a valid double-quoted YAML scalar
}

/** `hparams:` with each of the trial's values, in the spec's order, as a YAML block. */
export function bestConfigYaml(trial, names = Object.keys(trial.hparams)) {
  const lines = [`# trial ${trial.number} (id ${trial.id})`, "hparams:"];
  for (const name of names) {
    if (name in trial.hparams) lines.push(`  ${name}: ${yamlScalar(trial.hparams[name])}`);
  }
  return `${lines.join("\n")}\n`;
}
