/**
 * A/B of protocol/splice.ts alone, two builds in one process:
 *
 *   node dist/bench/splice-ab.js --a /path/to/other/checkout [--rounds 8] [--mib 512]
 *
 * Each round pushes the same bytes visitor → splice → backend over loopback sockets, once
 * through a's splice (the other checkout's dist/) and once through b's (this one), the order
 * alternating; it prints the medians of this process's CPU seconds per GiB (writer, splice
 * and reader together, the same for both) and of MB/s, and the paired b/a ratios. Cheaper
 * and steadier than bench/ab.ts (no nginx, no tunnel) when only the splice changed.
 */
import { once } from "node:events";
import net from "node:net";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { walkArgs } from "./options.js";
import { median } from "./report.js";

type SpliceFn = (a: net.Socket, b: net.Socket) => void;
const HERE = path.dirname(fileURLToPath(import.meta.url));
const MIB = 1024 * 1024;
const GIB = 1024 * MIB;
/** What the visitor writes at a time: one socket read's worth. */
const WRITE_BYTES = 64 * 1024;
const USAGE = "usage: node dist/bench/splice-ab.js --a DIR [--rounds N] [--mib N]";

async function socketPair(): Promise<{ c: net.Socket; s: net.Socket }> {
  const srv = net.createServer({ allowHalfOpen: true });
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const accepted = once(srv, "connection") as Promise<[net.Socket]>;
  const c = net.connect({ port: (srv.address() as net.AddressInfo).port, host: "127.0.0.1", allowHalfOpen: true });
  const [s] = await accepted;
  await once(c, "connect");
  srv.close();
  return { c, s };
}

async function once1(splice: SpliceFn, bytes: number): Promise<{ cpuSecPerGiB: number; mbPerSec: number }> {
  const front = await socketPair();
  const back = await socketPair();
  splice(front.s, back.c);
  let got = 0;
  back.s.on("data", (d: Buffer) => { got += d.length; });
  const ended = once(back.s, "end");
  const chunk = Buffer.alloc(WRITE_BYTES, 7);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let sent = 0; sent < bytes; sent += chunk.length) if (!front.c.write(chunk)) await once(front.c, "drain");
  front.c.end();
  await ended;
  const cpu = process.cpuUsage(cpu0);
  const sec = (performance.now() - t0) / 1000;
  front.c.destroy();
  back.s.destroy();
  if (got !== bytes) throw new Error(`splice-ab: ${bytes - got} bytes lost`);
  return { cpuSecPerGiB: (cpu.user + cpu.system) / 1e6 / (bytes / GIB), mbPerSec: bytes / 1e6 / sec };
}

async function main(): Promise<void> {
  let aDir = "";
  let rounds = 8;
  let bytes = 512 * MIB;
  walkArgs(process.argv.slice(2), USAGE, (arg, { val, int }) => {
    if (arg === "--a") aDir = path.resolve(val());
    else if (arg === "--rounds") rounds = int();
    else if (arg === "--mib") bytes = int() * MIB;
    else throw new Error(`unknown option ${arg}\n${USAGE}`);
  });
  if (!aDir) throw new Error(USAGE);
  const load = async (file: string): Promise<SpliceFn> => ((await import(pathToFileURL(file).href)) as { splice: SpliceFn }).splice;
  const impls = { a: await load(path.join(aDir, "dist", "protocol", "splice.js")), b: await load(path.join(HERE, "..", "protocol", "splice.js")) };
  const res = { a: [] as { cpuSecPerGiB: number; mbPerSec: number }[], b: [] as { cpuSecPerGiB: number; mbPerSec: number }[] };
  for (let r = 0; r < rounds; r++) {
    for (const k of r % 2 === 0 ? (["a", "b"] as const) : (["b", "a"] as const)) res[k].push(await once1(impls[k], bytes));
  }
  const med = (k: "a" | "b", f: "cpuSecPerGiB" | "mbPerSec"): number => median(res[k].map((x) => x[f]));
  process.stdout.write(`${rounds} rounds of ${bytes / MIB} MiB, medians\n`);
  process.stdout.write(`| build | CPU s/GiB | MB/s |\n| --- | ---: | ---: |\n`);
  for (const k of ["a", "b"] as const) process.stdout.write(`| ${k} | ${med(k, "cpuSecPerGiB").toFixed(3)} | ${med(k, "mbPerSec").toFixed(0)} |\n`);
  process.stdout.write(`paired b/a CPU: ${res.a.map((x, i) => (res.b[i]!.cpuSecPerGiB / x.cpuSecPerGiB).toFixed(2)).join(" ")}\n`);
}

main().catch((err: Error) => {
  process.stderr.write(`splice-ab: ${err.message}\n`);
  process.exit(1);
});
