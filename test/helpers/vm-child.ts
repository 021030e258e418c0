/**
 * Runs a provisioner in its own process so a test can kill -9 it.
 * argv[2]: JSON of the ProvisionerConfig; argv[3]: file the routes are mirrored to.
 * Prints "URL <url>" on stdout once listening.
 */
import fs from "node:fs";
import type { ProvisionerConfig } from "../../config/types.js";
import { createLogger } from "../../lib/log.js";
import { startProvisioner } from "../../provisioner/index.js";
import { MemoryRouteSink, type PublishedRoute } from "../../tunnel-client/routesink.js";

const cfg = JSON.parse(process.argv[2]!) as ProvisionerConfig;
const routesFile = process.argv[3]!;

class MirroredSink extends MemoryRouteSink {
  private save(): void {
    fs.writeFileSync(`${routesFile}.tmp`, JSON.stringify(Object.fromEntries(this.owners)));
    fs.renameSync(`${routesFile}.tmp`, routesFile);
  }
  override publish(owner: string, routes: PublishedRoute[]): void { super.publish(owner, routes); this.save(); }
  override withdraw(owner: string): void { super.withdraw(owner); this.save(); }
}

const sink = new MirroredSink();
const prov = await startProvisioner({
  config: cfg, cogName: "home1", hubDomain: "hub.example", hubHost: "hub.example", sink,
  logger: createLogger({ level: "info", write: (l) => process.stderr.write(l + "\n") }),
});
process.stdout.write(`URL ${prov.url}\n`);
process.on("SIGTERM", () => { void prov.close().then(() => process.exit(0)); });
