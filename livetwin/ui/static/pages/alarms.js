// Alarms: counts per severity, a filtered list with acknowledge, clear and comments (the
// server's errors shown in place), live over SSE; the badges and buttons the fleet and twin
// pages reuse.
import { api, coalesce, errorBox, listen, qs } from '../api.js';
import { ago, append, h, link, localTime, navigate, replace, table } from '../dom.js';

export const SEVERITIES = ['critical', 'warning', 'info'];
const STATES = [['open', 'open (active or acknowledged)'], ['active'], ['acknowledged'], ['cleared'], ['all', 'any state']];
const PAGE = 50;
const LIVE_MS = 400;

const when = (iso) => (iso ? h('span', { title: localTime(Date.parse(iso), true) }, ago(Date.parse(iso))) : '—');
export const severityBadge = (severity) => h('span', { class: `badge sev-${severity}` }, severity);
export const stateBadge = (state) => h('span', { class: `badge state-${state}`, 'data-state': state }, state);

/** The name acknowledgements and comments are made under, kept in this browser. */
export const actor = () => localStorage.getItem('livetwin.user') || '';

/** An input that edits the acting name. */
export function actorInput() {
  return h('input', {
    name: 'actor',
    value: actor(),
    placeholder: 'your name',
    autocomplete: 'name',
    onchange: (e) => localStorage.setItem('livetwin.user', e.target.value.trim()),
  });
}

/** Badges of open alarms per severity (`GET /api/alarms/counts`), each a link to the list. */
export function countBadges(counts) {
  const open = SEVERITIES.filter((s) => counts[s]?.total);
  if (!open.length) return h('span', { class: 'badge fresh', 'data-severity': 'none' }, 'no open alarms');
  return open.map((s) =>
    h(
      'a',
      { class: `badge sev-${s}`, 'data-severity': s, href: `#/alarms?${qs({ state: 'open', severity: s })}`, title: `${counts[s].active} active, ${counts[s].acknowledged} acknowledged` },
      `${counts[s].total} ${s}`,
    ),
  );
}

/** The worst severity among `alarms`. */
export const worst = (alarms) => SEVERITIES.find((s) => alarms.some((a) => a.severity === s));

/**
 * Acknowledge and clear buttons for `alarm`; errors (a 409 when someone else was quicker) go
 * into `out`, and `onChange(alarm)` hears the new state.
 */
export function alarmButtons(alarm, out, onChange, signal) {
  const act = (action) => async (e) => {
    const button = e.currentTarget;
    button.disabled = true;
    out.replaceChildren();
    const body = actor() ? { by: actor() } : {};
    try {
      onChange(await api(`api/alarms/${alarm.id}/${action}`, { method: 'POST', body, signal }));
    } catch (err) {
      if (err.name === 'AbortError') return;
      out.append(errorBox(err));
      button.disabled = false;
    }
  };
  return h(
    'span',
    { class: 'actions' },
    alarm.state === 'active' && h('button', { type: 'button', class: 'ack', onclick: act('ack') }, 'Acknowledge'),
    alarm.state !== 'cleared' && h('button', { type: 'button', class: 'clear secondary', onclick: act('clear') }, 'Clear'),
  );
}

export async function render(root, { params, signal }) {
  const filters = {
    state: params.get('state') || 'open',
    severity: params.get('severity') || '',
    type: params.get('type') || '',
    twin: params.get('twin') || '',
  };
  const offset = Math.max(0, Number(params.get('offset')) || 0);
  const go = (changes) => navigate(`#/alarms?${qs({ ...filters, offset: '', ...changes })}`);
  const apiFilters = { ...filters, state: filters.state === 'all' ? '' : filters.state };
  const [types, counts] = await Promise.all([api('api/types', { signal }), api('api/alarms/counts', { signal })]);

  const live = h('span', { class: 'live off', id: 'live' }, 'connecting…');
  const countCards = h('div', { class: 'cards', id: 'alarm-counts' });
  const showCounts = (c) =>
    replace(
      countCards,
      SEVERITIES.map((s) =>
        h(
          'button',
          {
            type: 'button',
            class: s === filters.severity ? `card sev-card sev-${s} selected` : `card sev-card sev-${s}`,
            'data-severity': s,
            onclick: () => go({ severity: s === filters.severity ? '' : s, state: 'open' }),
          },
          h('span', { class: 'card-title' }, s),
          h('span', { class: 'count' }, String(c[s]?.total ?? 0)),
          h('span', { class: 'muted small' }, `${c[s]?.active ?? 0} active · ${c[s]?.acknowledged ?? 0} acknowledged`),
        ),
      ),
    );
  showCounts(counts);

  const select = (name, options) =>
    h('select', { name }, options.map(([value, label]) => h('option', { value, selected: value === filters[name] }, label ?? value)));
  const form = h(
    'form',
    {
      class: 'filters',
      onsubmit: (e) => {
        e.preventDefault();
        const data = Object.fromEntries([...new FormData(e.target)].map(([k, v]) => [k, v.trim()]));
        delete data.actor;
        go(data);
      },
    },
    h('label', {}, 'State', select('state', STATES)),
    h('label', {}, 'Severity', select('severity', [['', 'any severity'], ...SEVERITIES.map((s) => [s])])),
    h('label', {}, 'Type', select('type', [['', 'all types'], ...types.map((t) => [t.name])])),
    h('label', {}, 'Twin', h('input', { name: 'twin', value: filters.twin, placeholder: 'twin id', autocomplete: 'off' })),
    h('button', { type: 'submit' }, 'Apply'),
    h('a', { href: '#/alarms', class: 'button secondary' }, 'Clear filters'),
    h('label', {}, 'Acting as', actorInput()),
  );
  const result = h('div', { class: 'result' });
  append(root, h('h1', {}, 'Alarms ', live), countCards, form, result);

  const rows = new Map(); // alarm id -> {row, details, alarm}

  function cells(entry) {
    const { alarm } = entry;
    const out = h('div', { class: 'row-error' });
    return [
      h('td', {}, severityBadge(alarm.severity)),
      h('td', {}, stateBadge(alarm.state), alarm.count > 1 && h('span', { class: 'muted small' }, ` ×${alarm.count}`)),
      h('td', { class: 'twin-cell' }, link('#/twin/', alarm.twin), h('div', { class: 'muted small' }, alarm.type)),
      h('td', {}, h('strong', {}, alarm.rule), h('div', { class: 'msg' }, alarm.message)),
      h('td', { class: 'nowrap' }, when(alarm.raised)),
      h(
        'td',
        { class: 'act' },
        alarmButtons(alarm, out, (fresh) => update(fresh), signal),
        h('button', { type: 'button', class: 'more secondary', 'aria-expanded': String(!entry.details.hidden), onclick: () => toggle(entry) }, entry.details.hidden ? 'Details' : 'Hide'),
        out,
      ),
    ];
  }

  function makeEntry(alarm) {
    const details = h('tr', { class: 'details', hidden: true }, h('td', { colspan: '6' }));
    const entry = { alarm, details, row: h('tr', { 'data-alarm': String(alarm.id) }) };
    replace(entry.row, cells(entry));
    rows.set(alarm.id, entry);
    return entry;
  }

  function update(alarm) {
    const entry = rows.get(alarm.id);
    if (!entry || alarm.version <= entry.alarm.version) return;
    entry.alarm = alarm;
    replace(entry.row, cells(entry));
    entry.row.classList.remove('flash');
    void entry.row.offsetWidth; // restart the highlight
    entry.row.classList.add('flash');
    if (!entry.details.hidden) loadDetails(entry);
    refreshCounts();
  }

  async function toggle(entry) {
    entry.details.hidden = !entry.details.hidden;
    replace(entry.row, cells(entry));
    if (!entry.details.hidden) await loadDetails(entry);
  }

  async function loadDetails(entry) {
    const cell = entry.details.firstChild;
    try {
      const full = await api(`api/alarms/${entry.alarm.id}`, { signal });
      replace(cell, details(full, (fresh) => update(fresh)));
    } catch (err) {
      if (err.name !== 'AbortError') replace(cell, errorBox(err));
    }
  }

  async function load() {
    let page;
    try {
      page = await api('api/alarms', { query: { ...apiFilters, limit: PAGE, offset }, signal });
    } catch (err) {
      if (err.name !== 'AbortError') replace(result, errorBox(err));
      return;
    }
    const open = new Set([...rows.values()].filter((e) => !e.details.hidden).map((e) => e.alarm.id));
    rows.clear();
    const entries = page.items.map(makeEntry);
    for (const entry of entries) {
      if (open.has(entry.alarm.id)) {
        entry.details.hidden = false;
        replace(entry.row, cells(entry));
        loadDetails(entry);
      }
    }
    const shown = page.total > PAGE ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : String(page.total);
    replace(
      result,
      h('p', { class: 'muted', id: 'alarm-total' }, `${shown} alarm${page.total === 1 ? '' : 's'}`),
      entries.length
        ? table('alarms', ['Severity', 'State', 'Twin', 'Rule and message', 'Raised', ''], entries.map((e) => [e.row, e.details]))
        : h('p', { class: 'empty' }, 'No alarms match.'),
      page.total > PAGE &&
        h('div', { class: 'pager' },
          h('button', { type: 'button', disabled: offset === 0, onclick: () => go({ offset: Math.max(0, offset - PAGE) }) }, '‹ newer'),
          h('button', { type: 'button', disabled: offset + PAGE >= page.total, onclick: () => go({ offset: offset + PAGE }) }, 'older ›')),
    );
  }

  const refreshCounts = coalesce(async () => {
    const fresh = await api('api/alarms/counts', { signal }).catch(() => null);
    if (fresh) showCounts(fresh);
  }, LIVE_MS, signal);
  const reload = coalesce(load, LIVE_MS, signal);
  const states = (s) => (s === 'open' ? ['active', 'acknowledged'] : s.split(','));
  const matches = (a) =>
    (!apiFilters.state || states(apiFilters.state).includes(a.state)) &&
    (!filters.severity || filters.severity.split(',').includes(a.severity)) &&
    (!filters.type || a.type === filters.type) &&
    (!filters.twin || a.twin === filters.twin);

  await load();
  listen(
    { kinds: 'alarm' },
    {
      alarm: (a) => {
        if (rows.has(a.id)) update(a);
        else if (matches(a) && offset === 0) reload();
        refreshCounts();
      },
      reset: () => {
        reload();
        refreshCounts();
      },
    },
    signal,
    (text, on) => {
      live.textContent = text;
      live.className = on ? 'live on' : 'live off';
    },
  );
}

/** One alarm's values, timeline, history and comments, with a comment form. */
function details(alarm, onChange) {
  const out = h('div', { class: 'comment-result' });
  const text = h('textarea', { name: 'text', rows: '2', placeholder: 'add a comment' });
  const button = h('button', { type: 'submit' }, 'Comment');
  const form = h(
    'form',
    {
      class: 'comment',
      onsubmit: async (e) => {
        e.preventDefault();
        out.replaceChildren();
        button.disabled = true;
        try {
          // sent as typed: the server says what is wrong with it (empty, too long)
          const body = { text: text.value, ...(actor() ? { author: actor() } : {}) };
          const fresh = await api(`api/alarms/${alarm.id}/comments`, { method: 'POST', body });
          onChange(fresh);
        } catch (err) {
          out.append(errorBox(err));
        } finally {
          button.disabled = false;
        }
      },
    },
    text,
    h('div', { class: 'actions' }, button),
    out,
  );
  const values = Object.entries(alarm.values || {});
  return h(
    'div',
    { class: 'alarm-details' },
    h('p', { class: 'small' },
      `since ${alarm.since ? localTime(Date.parse(alarm.since)) : '—'} · raised ${localTime(Date.parse(alarm.raised))}`,
      alarm.acknowledged && ` · acknowledged ${localTime(Date.parse(alarm.acknowledged))}${alarm.acknowledged_by ? ` by ${alarm.acknowledged_by}` : ''}`,
      alarm.cleared && ` · cleared ${localTime(Date.parse(alarm.cleared))}${alarm.cleared_by ? ` by ${alarm.cleared_by}` : ''}`,
      ` · source: ${alarm.source}`),
    values.length > 0 && h('p', { class: 'small' }, 'values: ', values.map(([k, v]) => `${k}=${v}`).join(', ')),
    h('h3', {}, 'History'),
    h('ul', { class: 'history' }, (alarm.history || []).map((e) =>
      h('li', {}, h('span', { class: 'nowrap muted' }, localTime(Date.parse(e.time))), ' ', h('strong', {}, e.event),
        e.by && ` by ${e.by}`, e.note && ` — ${e.note}`))),
    h('h3', {}, 'Comments'),
    (alarm.comments || []).length
      ? h('ul', { class: 'comments' }, alarm.comments.map((c) =>
          h('li', {}, h('span', { class: 'nowrap muted' }, localTime(Date.parse(c.time))), ' ',
            h('strong', {}, c.author || 'someone'), ': ', c.text)))
      : h('p', { class: 'muted small' }, 'No comments yet.'),
    form,
  );
}
