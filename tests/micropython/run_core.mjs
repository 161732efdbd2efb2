// Runs agent/core and a scenario module under MicroPython (WebAssembly port) in Node.
//
// usage: node tests/micropython/run_core.mjs [--root DIR] [--mp DIR] [--module FILE.py ...]
//   --mp names the directory holding node_modules/@micropython/micropython-webassembly-pyscript
//   (default .cache/micropython). Each --module (default tests/core/scenarios.py and
//   tests/core/portable.py) must define run_all() -> (passed names, [(name, message)]).
//   Copies agent/__init__.py, agent/core/*.py, the modules and their sibling helpers into MicroPython's in-memory
//   filesystem, runs them, prints one line per check, and exits 1 if any failed (2 if
//   MicroPython itself could not run them, e.g. a CPython-only import).
import { readdirSync, readFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const root = resolve(opt("--root", "."));
const mpDir = resolve(root, opt("--mp", ".cache/micropython"));
const given = args.filter((_, i) => i > 0 && args[i - 1] === "--module");
const modulePaths = (given.length ? given : ["tests/core/scenarios.py", "tests/core/portable.py"])
  .map((p) => resolve(root, p));
const pkg = join(mpDir, "node_modules/@micropython/micropython-webassembly-pyscript");

const { loadMicroPython } = await import(pathToFileURL(join(pkg, "micropython.mjs")).href);
const out = [];
const mp = await loadMicroPython({
  heapsize: 32 * 1024 * 1024,
  stdout: (line) => { out.push(line); console.log(line); },
  stderr: (line) => console.error(line),
});

// Lay out /work/agent/core/*.py and /work/<module>.py in MicroPython's filesystem.
const FS = mp.FS;
for (const dir of ["/work", "/work/agent", "/work/agent/core"]) {
  try { FS.mkdir(dir); } catch (e) { /* exists */ }
}
FS.writeFile("/work/agent/__init__.py", readFileSync(join(root, "agent/__init__.py")));
const coreDir = join(root, "agent/core");
for (const name of readdirSync(coreDir).filter((n) => n.endsWith(".py")).sort()) {
  FS.writeFile("/work/agent/core/" + name, readFileSync(join(coreDir, name)));
}
const modNames = modulePaths.map((p) => basename(p, ".py"));
// Helper modules beside each module (rig.py, ...) come along; pytest files stay behind.
for (const p of modulePaths) {
  const dir = dirname(p);
  for (const name of readdirSync(dir).filter((n) => n.endsWith(".py") && !n.startsWith("test_"))) {
    FS.writeFile("/work/" + name, readFileSync(join(dir, name)));
  }
}

const program = `
import sys
sys.path.insert(0, "/work")
print("micropython", sys.implementation.name, ".".join(str(v) for v in sys.implementation.version[:3]))
passed, failures = [], []
for name in ${JSON.stringify(modNames)}:
    p, f = __import__(name).run_all()
    passed += p
    failures += f
for name in passed:
    print("PASS", name)
for name, message in failures:
    print("FAIL", name, message)
print("RESULT %d passed %d failed" % (len(passed), len(failures)))
n_failed = len(failures)
n_passed = len(passed)
`;
try {
  await mp.runPythonAsync(program);
} catch (e) {
  console.error("MicroPython error:", e && e.message ? e.message : e);
  process.exit(2);
}
const failed = mp.globals.get("n_failed");
const passed = mp.globals.get("n_passed");
if (failed !== 0 || !(passed > 0)) {
  process.exit(1);
}
process.exit(0);
