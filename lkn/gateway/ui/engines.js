// The engines panel: the VRAM estimate against the budget, and one card per engine (every
// configured variant, stopped ones too) with its state written out and the operator's buttons.
// Cards are updated in place, so a poll never steals a button from under the pointer.
import { bar, duration, el, mib, variantOf } from "./format.js";

// A symbol beside the state word: the state reads without colour, and at a glance.
const SYMBOLS = { ready: "●", starting: "◐", stopping: "◑", asleep: "☾", stopped: "○",
                  failed: "✕" };
const RUNNING = new Set(["starting", "ready", "stopping", "asleep"]);
// What each button asks of the admin API: load starts this variant, the others act on the model.
const ACTIONS = {
  load: "start {} (or swap it in); answers when it is ready",
  unload: "stop every engine of {} once its requests in flight are done",
  sleep: "release the memory of {}'s engine and keep it running",
  wake: "take back the memory of {}'s engine",
};

function stateText(engine) {
  const notes = [engine.retired && "retired", engine.unloading && "unloading",
                 engine.pinned && "pinned"].filter(Boolean);
  const word = `${SYMBOLS[engine.state] || "?"} ${engine.state}`;
  return notes.length ? `${word} (${notes.join(", ")})` : word;
}

class EngineCard {
  constructor(engine, act) {
    this.key = engine.key;
    this.model = engine.model;
    this.state = el("span", { class: "state" });
    this.fields = {};
    const dl = el("dl");
    for (const [name, label] of [["context", "context"], ["in_flight", "in flight"],
                                 ["idle", "idle for"], ["failures", "failures"]]) {
      this.fields[name] = el("dd", { "data-field": name });
      dl.append(el("div", {}, el("dt", { text: label }), this.fields[name]));
    }
    this.vram = el("div", { class: "engine-vram" });
    this.error = el("p", { class: "engine-error" });
    this.buttons = {};
    const actions = el("div", { class: "actions" });
    for (const [action, what] of Object.entries(ACTIONS)) {
      const target = action === "load" ? engine.key : engine.model;
      const button = el("button", { type: "button", "data-action": action,
                                    "aria-label": `${action} ${target}`,
                                    title: what.replace("{}", target),
                                    text: action[0].toUpperCase() + action.slice(1) });
      button.addEventListener("click", () => act(action, this.model, variantOf(this.key)));
      this.buttons[action] = button;
      actions.append(button);
    }
    this.node = el("article", { class: "engine", "data-key": engine.key },
                   el("h3", {}, el("span", { class: "engine-key", text: engine.key }), " ",
                      this.state),
                   this.vram, dl, this.error, actions);
  }

  update(engine, model, budget, busy) {
    this.node.dataset.engine = engine.engine;
    this.node.dataset.state = engine.state;
    this.state.textContent = stateText(engine);
    const effective = engine.ctx_size !== variantOf(engine.key)
      ? ` (engine reports ${engine.ctx_size})` : "";
    this.fields.context.textContent = `${variantOf(engine.key)} tokens${effective}`;
    this.fields.in_flight.textContent = String(engine.in_flight);
    this.fields.idle.textContent = duration(engine.idle_s);
    const f = engine.failures || {};
    this.fields.failures.textContent = f.consecutive
      ? `${f.consecutive} in a row${f.failed ? `, refusing for ${duration(f.retry_in_s)}` : ""}`
      : `none (${engine.crashes || 0} crashes)`;
    this.vram.replaceChildren(bar(engine.vram_mb, budget,
                                  `VRAM estimate ${mib(engine.vram_mb)} of ${budget} MiB`));
    const error = (f.last_error || engine.last_error || "");
    this.error.textContent = error ? `last error: ${error}` : "";
    this.error.hidden = !error;
    const running = RUNNING.has(engine.state);
    const enabled = {
      load: !running && !engine.retired,
      unload: running && !engine.retired,
      sleep: Boolean(model && model.can_sleep) && engine.state === "ready",
      wake: engine.state === "asleep",
    };
    for (const [action, button] of Object.entries(this.buttons)) {
      button.disabled = busy || !enabled[action];
    }
  }
}

export class EnginesPanel {
  constructor(vramNode, listNode, act) {
    this.vramNode = vramNode;
    this.listNode = listNode;
    this.act = act;
    this.cards = new Map();
  }

  render(status, busyModels) {
    const budget = status.vram.budget_mb;
    const running = status.engines.filter((e) => RUNNING.has(e.state)).length;
    this.vramNode.replaceChildren(
      el("p", { class: "vram-summary",
                text: `${running} ${running === 1 ? "engine" : "engines"} running; VRAM `
                      + `estimate ${mib(status.vram.estimated_mb)} of ${budget} MiB budget` }),
      bar(status.vram.estimated_mb, budget,
          `${Math.round(status.vram.estimated_mb)} of ${budget} MiB`));
    const seen = new Set();
    const order = [];
    for (const engine of status.engines) {
      const id = engine.engine;
      seen.add(id);
      let card = this.cards.get(id);
      if (!card) {
        card = new EngineCard(engine, this.act);
        this.cards.set(id, card);
      }
      card.update(engine, status.models[engine.model], budget, busyModels.has(engine.model));
      order.push(card.node);
    }
    for (const id of [...this.cards.keys()]) if (!seen.has(id)) this.cards.delete(id);
    // Re-append only when the order or the set changed: moving a node would drop its focus.
    const current = [...this.listNode.children];
    if (current.length !== order.length || current.some((node, i) => node !== order[i])) {
      this.listNode.replaceChildren(...order);
    }
  }
}
