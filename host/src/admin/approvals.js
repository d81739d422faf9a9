// Wardgate approvals page: lists pending requests and sends decisions.
// All text goes through textContent (never innerHTML): statements are untrusted.
"use strict";
const $ = (id) => document.getElementById(id);
const KEY = "wardgate.credential";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function api(path, opts) {
  const res = await fetch(path, {
    ...(opts || {}),
    headers: { "Authorization": "Bearer " + sessionStorage.getItem(KEY), "Content-Type": "application/json" },
  });
  const body = await res.json().catch(() => ({ error: "HTTP " + res.status }));
  if (!res.ok) throw new Error(body.error || ("HTTP " + res.status));
  return body;
}

function when(ms) { return new Date(ms).toLocaleString(); }

function render(list) {
  const box = $("list");
  box.replaceChildren();
  const pending = list.filter((r) => r.status === "pending");
  $("empty").hidden = pending.length > 0;
  for (const r of pending) {
    const reason = el("input", { type: "text", placeholder: "reason (required to deny)", class: "reason" });
    const approve = el("button", { class: "approve", "data-id": r.id }, "Approve");
    const deny = el("button", { class: "deny", "data-id": r.id }, "Deny");
    approve.disabled = deny.disabled = !r.can_decide;
    approve.onclick = () => decide(r.id, "approve", reason.value);
    deny.onclick = () => decide(r.id, "deny", reason.value);
    const votes = r.votes.map((v) => `${v.decision} by ${v.approver.name}`).join(", ") || "none yet";
    box.append(el("div", { class: "req", id: "req-" + r.id, "data-id": r.id },
      el("div", { class: "meta" }, el("strong", {}, r.summary), " on ", el("code", {}, r.connection),
        " · ", r.plugin, ": ", r.reason),
      el("pre", { class: "statement" }, r.statement),
      r.justification ? el("div", { class: "meta" }, "Justification: ", r.justification) : "",
      el("div", { class: "meta" }, `Request ${r.id} · approvers: ${r.approver_groups.join(", ")} · quorum ${r.quorum} · votes: ${votes} · expires ${when(r.expires_at_ms)}`),
      r.can_decide ? el("p", {}, approve, deny, reason) : el("p", { class: "muted" }, "You cannot decide this request.")));
  }
}

function say(cls, text) {
  $("status").className = cls;
  $("status").textContent = text;
}

async function refresh() {
  try {
    render(await api("/api/approvals?status=pending"));
    return true;
  } catch (e) {
    say("error", e.message);
    return false;
  }
}

async function decide(id, what, reason) {
  let message;
  try {
    const r = await api(`/api/approvals/${encodeURIComponent(id)}/${what}`, { method: "POST", body: JSON.stringify({ reason }) });
    message = ["ok", `${id} is now ${r.status}.`];
  } catch (e) {
    message = ["error", `${id}: ${e.message}`];
  }
  await refresh();
  say(...message);
}

function signedIn() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("whoami").textContent = "signed in for this tab";
  refresh();
}

$("signin").onclick = () => {
  const c = $("credential").value.trim();
  if (!c) return;
  sessionStorage.setItem(KEY, c);
  $("credential").value = "";
  signedIn();
};
$("signout").onclick = (e) => { e.preventDefault(); sessionStorage.removeItem(KEY); location.reload(); };
$("refresh").onclick = (e) => { e.preventDefault(); refresh(); };
if (sessionStorage.getItem(KEY)) signedIn();
setInterval(() => { if (sessionStorage.getItem(KEY)) refresh(); }, 5000);
