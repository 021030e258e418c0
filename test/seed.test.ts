/**
 * The cloud-init NoCloud seed (provisioner/seed.ts) as data: what cloud-init
 * will read from it, whatever the keys hold. The real Debian image reading it
 * is test/debian-image.test.ts; the busybox test image reading it is every
 * provisioner test that logs in with the seeded key.
 */
import t from "tap";
import { parse } from "yaml";
import { SEED_SUDO_RULE, SEED_USER_SHELL, seedFiles } from "../provisioner/seed.js";
import { parseSshKey } from "../provisioner/sshkeys.js";

const ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJC7WuZ6ySQTtcSr5i+g+rMLC/YgTaO1ZUzcjsHBY4dQ";
/** Every YAML indicator sshkeys.ts lets through in a comment (it refuses only `"` and `\`). */
const HOSTILE = parseSshKey(`${ED} a: b # c & *d !e {f} [g] %h @i \`j | > 'k' - l ---`, "k");
/** Longer than yaml's default 80-column fold. */
const LONG = parseSshKey(`${ED} ${"x".repeat(150)}`, "k");
const KEYS = [`${ED} me@host`, HOSTILE, LONG];

function userData(sshUser: string): { text: string; doc: Record<string, any> } {
  const { userData: text } = seedFiles({ name: "web1", uuid: "0b9d6c8e-3d57-4c38-9d7e-5f0f0d1c2a3b", sshKeys: KEYS, sshUser });
  return { text, doc: parse(text) as Record<string, any> };
}

t.test("meta-data names the instance and the hostname", async (t) => {
  const { metaData } = seedFiles({ name: "web1", uuid: "1e5", sshKeys: KEYS, sshUser: "root" });
  // "1e5" is a float in plain YAML: the library must quote it to keep it a string.
  t.same(parse(metaData), { "instance-id": "1e5", "local-hostname": "web1" });
});

t.test("user-data is #cloud-config, manages /etc/hosts, sets the hostname", async (t) => {
  for (const user of ["root", "alice"]) {
    const { text, doc } = userData(user);
    t.ok(text.startsWith("#cloud-config\n"), "cloud-init reads user-data as cloud-config only with this first line");
    t.equal(doc.hostname, "web1");
    t.equal(doc.manage_etc_hosts, true, "else sudo prints 'unable to resolve host web1'");
  }
});

t.test("ssh_user root: keys to root and to the image's default user, no extra user", async (t) => {
  const { doc } = userData("root");
  t.equal(doc.disable_root, false);
  t.same(doc.ssh_authorized_keys, KEYS);
  t.notOk("users" in doc, "cloud.cfg's own `users: [default]` stays in force");
});

t.test("another ssh_user: created with the keys and passwordless sudo, the default user kept", async (t) => {
  const { doc } = userData("alice");
  t.same(doc.users, [
    "default",
    { name: "alice", sudo: SEED_SUDO_RULE, shell: SEED_USER_SHELL, lock_passwd: true, ssh_authorized_keys: KEYS },
  ]);
  t.same(doc.ssh_authorized_keys, KEYS, "the default user gets the keys too");
  t.notOk("disable_root" in doc, "root stays closed");
});

t.test("keys survive any comment exactly, one double-quoted line each", async (t) => {
  const { text, doc } = userData("alice");
  t.same(doc.users[1].ssh_authorized_keys, KEYS);
  // The form scripts/build-test-image.sh's init reads with sed: `- "ssh-… …"`
  // on one line, never folded, never a YAML alias for the second copy.
  for (const k of KEYS) {
    const lines = text.split("\n").filter((l) => l.trim() === `- "${k}"`);
    t.equal(lines.length, 2, `both copies of the key written out in full: ${k.slice(0, 40)}…`);
  }
  t.notMatch(text, /[&*]a\d/, "no anchors or aliases");
});
