// Small DOM and formatting helpers: h() builds elements (text is never parsed as HTML).

/** h('a', {href: '#/x', onclick: fn}, 'text', child, [more]) -> HTMLElement */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'value') el.value = value;
    else if (key === 'checked') el.checked = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  return append(el, ...children);
}

/** parent.append() that skips null, undefined and false (the DOM would print "null"). */
export function append(parent, ...children) {
  parent.append(...nodes(children));
  return parent;
}

/** parent.replaceChildren(), skipping null, undefined and false. */
export function replace(parent, ...children) {
  parent.replaceChildren(...nodes(children));
  return parent;
}

const nodes = (children) =>
  children
    .flat(Infinity)
    .filter((c) => c !== undefined && c !== null && c !== false)
    .map((c) => (c instanceof Node ? c : String(c)));

/** A number for people: 5 significant digits, '—' for null. */
export function fmt(value) {
  if (value === null || value === undefined) return '—';
  if (typeof value !== 'number') return String(value);
  return String(Number(value.toPrecision(5)));
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

/** Epoch ms -> local 'YYYY-MM-DD HH:MM:SS' (also what Plotly's date axis reads). */
export function localTime(ms, withMs = false) {
  const d = new Date(ms);
  const s = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return withMs ? `${s}.${pad(d.getMilliseconds(), 3)}` : s;
}

/** '3 min ago' from epoch ms. */
export function ago(ms, now = Date.now()) {
  const s = Math.round((now - ms) / 1000);
  if (s < -5) return `in ${localTime(ms)}`;
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** The stale threshold (minutes without an update), kept in this browser. */
export function staleMinutes() {
  const stored = Number(localStorage.getItem('livetwin.staleMinutes'));
  return stored > 0 ? stored : 5;
}

export function setStaleMinutes(minutes) {
  localStorage.setItem('livetwin.staleMinutes', String(minutes));
}

/** Whether an update at `updatedMs` is stale: older than `afterMs` (the type's stale_after),
 * or than this browser's minutes when the type has none yet. */
export const isStale = (updatedMs, afterMs = null, now = Date.now()) =>
  updatedMs === null || now - updatedMs > (afterMs ?? staleMinutes() * 60_000);

/** A badge saying when a twin last changed, marked stale past `afterMs` (see isStale). */
export function freshness(updatedIso, afterMs = null) {
  if (!updatedIso) return h('span', { class: 'badge stale' }, 'no data');
  const ms = Date.parse(updatedIso);
  const stale = isStale(ms, afterMs);
  const limit = afterMs ?? staleMinutes() * 60_000;
  return h(
    'span',
    { class: stale ? 'badge stale' : 'badge fresh', title: `${localTime(ms, true)}; stale after ${Math.round(limit / 1000)} s` },
    stale ? `stale · ${ago(ms)}` : ago(ms),
  );
}

/** An identifier that may break after its underscores only ('motor_<wbr>torque'). */
export const breakable = (name) =>
  String(name).split('_').flatMap((part, i, all) => (i < all.length - 1 ? [`${part}_`, document.createElement('wbr')] : [part]));

/** A hash link: link('#/twin/', id) encodes the id. */
export const link = (prefix, id, text = id) => h('a', { href: prefix + encodeURIComponent(id) }, text);

/** A scroll box for a table, so narrow screens scroll it instead of the page. */
export const scroller = (table) => h('div', { class: 'scroll' }, table);

/** A table (in a scroll box) with a header row. */
export const table = (cls, headers, rows) =>
  scroller(
    h('table', { class: cls }, h('thead', {}, h('tr', {}, headers.map((c) => h('th', {}, c)))), h('tbody', {}, rows)),
  );

/** Change the hash's query without re-rendering (for deep links to what is on screen). */
export function replaceQuery(params) {
  const base = location.hash.split('?')[0] || '#/';
  const query = new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== '' && v !== null && v !== undefined),
  ).toString();
  history.replaceState(null, '', query ? `${base}?${query}` : base);
}

/** Go to a hash route; going to the one on screen renders it again (e.g. "Apply" twice). */
export function navigate(hash) {
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent('hashchange'));
  else location.hash = hash;
}
