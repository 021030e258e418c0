/**
 * Child process for test/silent-flood.test.ts, the attacker: opens N TCP connections from
 * LOCAL_ADDRESS to 127.0.0.1:PORT, all at once, and sends nothing on any of them. Prints
 * "settled OPEN" once every connection is connected or closed, then holds the open ones.
 * A line "count" on stdin is answered with "open OPEN"; stdin closing ends it.
 * Usage: node silent-holder.ts PORT N LOCAL_ADDRESS
 */
import net from "node:net";

const [port, n, localAddress] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
const socks: net.Socket[] = [];
const open = (): number => socks.filter((s) => !s.destroyed && s.readyState === "open").length;

const settled = Array.from({ length: n }, () => {
  const s = net.connect({ port, host: "127.0.0.1", localAddress });
  s.on("error", () => {}); // the hub closes those over its caps: expected
  socks.push(s);
  return new Promise<void>((resolve) => {
    s.once("connect", () => resolve());
    s.once("close", () => resolve());
  });
});
void Promise.all(settled).then(() => process.stdout.write(`settled ${open()}\n`));

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d: string) => {
  input += d;
  let nl: number;
  while ((nl = input.indexOf("\n")) >= 0) {
    if (input.slice(0, nl).trim() === "count") process.stdout.write(`open ${open()}\n`);
    input = input.slice(nl + 1);
  }
});
process.stdin.on("end", () => {
  for (const s of socks) s.destroy();
  process.exit(0);
});
