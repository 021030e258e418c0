/**
 * What `capsul vm show` says about a VM's custom domain (provisioner/vmdomains.ts
 * domainState), from the hub's answer on its TLS route and the hub's claim report,
 * with the refusal texts gateway/domains.ts really sends. No sockets: the end-to-end
 * path is test/vm-domains.test.ts.
 */
import t from "tap";
import type { WireDomainProof } from "../protocol/control.js";
import { domainState } from "../provisioner/vmdomains.js";

const host = "blog.alice.net";
const claim = (state: WireDomainProof["state"], lastError: string | null = null): WireDomainProof => ({
  hostname: host, record: `_capsul-challenge.${host}`, value: "v", state, verifiedAt: null, checkedAt: 1, lastError,
});
const needsRecord = `hostname ${host} is not granted to cog home1; to prove you control ${host}, create the DNS record _capsul-challenge.${host}. TXT "v"; the hub looks it up every 30s`;
const heldElsewhere = `hostname ${host} is held by cog other (proven by DNS on ${host})`;

t.test("accepted, pending and not published", async (t) => {
  t.same(domainState(host, { state: "accepted" }, []), { state: "accepted", reason: null });
  t.match(domainState(host, { state: "pending" }, []), { state: "pending" });
  t.match(domainState(host, null, [claim("verified")]), { state: "not-published", reason: /not running/ });
});

t.test("refused for want of the TXT record: waiting for the DNS proof, with the last lookup's error once there is one", async (t) => {
  t.same(domainState(host, { state: "refused", reason: needsRecord }, []), { state: "waiting-for-dns-proof", reason: needsRecord },
    "before the hub's first claim report");
  t.same(domainState(host, { state: "refused", reason: needsRecord }, [claim("pending", `no TXT record at _capsul-challenge.${host}`)]),
    { state: "waiting-for-dns-proof", reason: `no TXT record at _capsul-challenge.${host}` });
  t.match(domainState(host, { state: "refused", reason: `${needsRecord}; the record was there before and is gone now` }, [claim("lost", "gone")]),
    { state: "waiting-for-dns-proof", reason: "gone" }, "a proof that disappeared waits for its record again");
});

t.test("refused for another reason: refused, with the hub's reason", async (t) => {
  t.same(domainState(host, { state: "refused", reason: heldElsewhere }, [claim("pending")]), { state: "refused", reason: heldElsewhere },
    "another cog holds the name: no record of ours would help");
  const underHub = `hostname x.hub.example is not granted to cog home1; names under the hub's domain hub.example are granted by the hub operator only`;
  t.same(domainState("x.hub.example", { state: "refused", reason: underHub }, []), { state: "refused", reason: underHub });
});

t.test("the hub's refusal code decides when it sends one; the text is only the fallback for older hubs", async (t) => {
  t.same(domainState(host, { state: "refused", reason: "some other wording", code: "domain_unproven" }, []),
    { state: "waiting-for-dns-proof", reason: "some other wording" }, "the code, whatever the text says");
  t.same(domainState(host, { state: "refused", reason: needsRecord, code: "some_newer_code" }, []),
    { state: "refused", reason: needsRecord }, "another code: the text is not read");
});
