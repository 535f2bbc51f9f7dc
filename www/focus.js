// Keyboard focus that survives what the page does to the focused control. Chrome moves focus
// to <body> when the focused button is disabled (Load, Encode, Generate while busy) or removed
// (lists re-rendered after Use / Delete / Remove), which leaves keyboard and screen-reader users
// at the top of the page. noteFocus() remembers where focus is; restoreFocus() puts it back only
// if it was lost (never takes it from wherever the user moved it meanwhile).

// True when no control has focus, or the one that has it can no longer be used.
export function focusLost() {
  const a = document.activeElement;
  return !a || a === document.body || a === document.documentElement || !usable(a);
}

// Can take keyboard focus right now: connected, enabled, not hidden.
export function usable(el) {
  return !!el && el.isConnected && !el.matches(":disabled") && !el.closest("[hidden], [inert]") && el.getClientRects().length > 0;
}

// Where focus is: the element and, inside a list of `li[data-key]` items, which item (key and
// position) and which control of it (data-action or first class), to find its re-rendered twin.
export function noteFocus() {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const li = el.closest("li[data-key]");
  const list = li ? li.parentElement : null;
  const action = el.dataset.action ? `[data-action="${el.dataset.action}"]` : [...el.classList].filter((c) => c !== "secondary").map((c) => `.${CSS.escape(c)}`)[0] || null;
  return { el, list, key: li ? li.dataset.key : null, index: li ? [...list.children].indexOf(li) : -1, action };
}

// If focus was lost: focus the noted control, else its twin in the re-rendered item with the
// same key, else the same control of the item now at the same position (the next one after a
// delete; the last one when the deleted item was last), else another control of that item,
// else the first usable fallback. Returns the element focused, or null. Does not scroll: the
// control is usually where the user just was, and a load or a generation that ends late must
// not pull the page back to it.
export function restoreFocus(note, ...fallbacks) {
  if (!focusLost()) return null;
  const candidates = [];
  if (note) {
    candidates.push(note.el);
    if (note.list && note.list.isConnected) {
      const items = [...note.list.children];
      const same = items.find((li) => li.dataset.key === note.key);
      const near = items[Math.min(note.index, items.length - 1)];
      for (const li of [same, near]) {
        if (!li) continue;
        if (note.action) candidates.push(li.querySelector(note.action));
        candidates.push(...li.querySelectorAll("button, select, input, a[href]"));
      }
    }
  }
  candidates.push(...fallbacks);
  const target = candidates.find(usable) || null;
  if (target) target.focus({ preventScroll: true });
  return target;
}
