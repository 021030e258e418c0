/**
 * Command line of the bench: `node dist/bench/run.js [--quick] [--only a,b] [...]`.
 */
import path from "node:path";
import { PATH_NAMES, REPO_ROOT, type PathName } from "./paths.js";

const MIB = 1024 * 1024;
export const SECTIONS = ["paths", "idle", "micro", "rtt"] as const;
export type Section = (typeof SECTIONS)[number];

export interface Options {
  quick: boolean;
  only: PathName[];
  sections: Section[];
  rounds: number;
  /** wrk duration per run. */
  seconds: number;
  bigBytes: number;
  /** Held idle connection counts, measured in this order. */
  idleCounts: number[];
  microBytes: number;
  rttBytes: number;
  /** RTT relay delay per direction. */
  rttDelayMs: number;
  /** Where RESULTS.md, results.svg and results.json go. */
  outDir: string;
  /** Also profile hub and cog (node --cpu-prof) under bulk and keep-alive load. */
  profile: boolean;
  /** Only the profiles: writes PROFILE.md and leaves RESULTS.md alone. */
  profileOnly: boolean;
  command: string;
}

export const USAGE = `usage: node dist/bench/run.js [options]
  --quick              1 round, 2 s wrk runs, 8 MiB files, 200 idle connections
  --only a,b           paths: ${PATH_NAMES.join(",")} (default: all)
  --sections a,b       ${SECTIONS.join(",")} (default: all)
  --rounds N           interleaved rounds (default 3)
  --seconds N          wrk duration (default 10)
  --big-mib N          size of /big in MiB (default 256)
  --idle N,M           idle connections to hold (default 2000,10000)
  --micro-mib N        bytes per mux microbenchmark run (default 256)
  --rtt-mib N          download size over the delay relay (default 256)
  --out DIR            output directory (default bench/)
  --profile            also write PROFILE.md: hub/cog --cpu-prof under bulk and keep-alive
                       load, and (with Linux perf) capsul's and gopeer's CPU by kind of work
  --profile-only       only that: write PROFILE.md, leave RESULTS.md as it is`;

/**
 * Walks a bench command line: `on(flag, reader)` for each flag, where `reader.val()` takes
 * the flag's value and `reader.int()` takes it as a positive integer (bench/run.ts, bench/ab.ts).
 */
export function walkArgs(argv: string[], usage: string, on: (flag: string, reader: { val(): string; int(): number }) => void): void {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${usage}`);
      return v;
    };
    const int = (): number => {
      const n = Number(val());
      if (!Number.isInteger(n) || n <= 0) throw new Error(`${a}: positive integer expected\n${usage}`);
      return n;
    };
    on(a, { val, int });
  }
}

export function parseOptions(argv: string[]): Options {
  const quick = argv.includes("--quick");
  const o: Options = {
    quick,
    only: [...PATH_NAMES],
    sections: [...SECTIONS],
    rounds: quick ? 1 : 3,
    seconds: quick ? 2 : 10,
    bigBytes: (quick ? 8 : 256) * MIB,
    idleCounts: quick ? [200] : [2000, 10000],
    microBytes: (quick ? 8 : 256) * MIB,
    rttBytes: (quick ? 8 : 256) * MIB,
    rttDelayMs: 25,
    outDir: path.join(REPO_ROOT, "bench"),
    profile: false,
    profileOnly: false,
    command: ["node", "dist/bench/run.js", ...argv].join(" "),
  };
  walkArgs(argv, USAGE, (a, { val, int }) => {
    switch (a) {
      case "--quick": break;
      case "--only": {
        const names = val().split(",");
        for (const n of names) if (!(PATH_NAMES as readonly string[]).includes(n)) throw new Error(`--only: unknown path ${n}\n${USAGE}`);
        o.only = PATH_NAMES.filter((p) => names.includes(p));
        break;
      }
      case "--sections": {
        const names = val().split(",");
        for (const n of names) if (!(SECTIONS as readonly string[]).includes(n)) throw new Error(`--sections: unknown section ${n}\n${USAGE}`);
        o.sections = SECTIONS.filter((s) => names.includes(s));
        break;
      }
      case "--rounds": o.rounds = int(); break;
      case "--seconds": o.seconds = int(); break;
      case "--big-mib": o.bigBytes = int() * MIB; break;
      case "--idle": o.idleCounts = val().split(",").map(Number); break;
      case "--micro-mib": o.microBytes = int() * MIB; break;
      case "--rtt-mib": o.rttBytes = int() * MIB; break;
      case "--out": o.outDir = path.resolve(val()); break;
      case "--profile": o.profile = true; break;
      case "--profile-only": o.profile = true; o.profileOnly = true; break;
      case "-h": case "--help": process.stdout.write(USAGE + "\n"); process.exit(0); break;
      default: throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  });
  if (o.profileOnly) o.sections = [];
  return o;
}
