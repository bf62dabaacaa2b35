// Fleet: types with twin counts, twins per type with last update and a stale marker, search by
// id, filter with the expression language, the parent/children hierarchy, and open alarms (per
// severity and per twin, live over SSE).
import { api, coalesce, errorBox, listen, qs, twinPath } from '../api.js';
import { sparkline } from '../chart.js';
import { append, breakable, fmt, freshness, h, link, navigate, replace, setStaleMinutes, staleMinutes, table } from '../dom.js';
import { countBadges, worst } from './alarms.js';

const PAGE = 50;
const SEARCH_SCAN = 1000; // the API has no id search: a search scans this many twins here
const REFRESH_MS = 15_000;
const ALARM_SCAN = 1000; // open alarms read for the per-twin markers (the API's page limit)
const LIVE_MS = 1000;
const SPARK_MS = 3600e3; // the sparkline shows the first key value over the last hour
const SPARK_EVERY = '1m';

export async function render(root, { params, signal }) {
  const filters = {
    type: params.get('type') || '',
    where: params.get('where') || '',
    parent: params.get('parent') || '',
    q: params.get('q') || '',
  };
  const offset = Math.max(0, Number(params.get('offset')) || 0);
  const go = (changes) => {
    navigate(`#/fleet?${qs({ ...filters, ...changes })}`);
  };

  const types = await api('api/types', { signal });
  const specs = Object.fromEntries(
    await Promise.all(
      types.map(async (t) => [t.name, (await api(`api/types/${encodeURIComponent(t.name)}`, { signal })).spec]),
    ),
  );
  const hasChildren = (typeName) => (specs[typeName]?.children || []).length > 0;
  const staleAfter = Object.fromEntries(types.map((t) => [t.name, t.stale_after]));

  const typeCards = h(
    'div',
    { class: 'cards' },
    types.length === 0
      ? h('p', { class: 'muted' }, 'No twin types yet: declare one on the ', h('a', { href: '#/types' }, 'Types'), ' page.')
      : types.map((t) =>
          h(
            'button',
            {
              type: 'button',
              class: t.name === filters.type ? 'card selected' : 'card',
              'data-type': t.name,
              onclick: () => go({ type: t.name === filters.type ? '' : t.name, where: '', offset: '' }),
            },
            h('span', { class: 'card-title' }, t.name),
            h('span', { class: 'count', 'data-count': t.name }, String(t.twins)),
            h('span', { class: 'muted' }, t.twins === 1 ? 'twin' : 'twins'),
          ),
        ),
  );

  const text = (name, placeholder, extra = {}) =>
    h('input', { name, value: filters[name], placeholder, autocomplete: 'off', spellcheck: 'false', ...extra });
  const typeSelect = h(
    'select',
    { name: 'type' },
    h('option', { value: '' }, 'all types'),
    types.map((t) => h('option', { value: t.name, selected: t.name === filters.type }, t.name)),
  );
  const form = h(
    'form',
    {
      class: 'filters',
      onsubmit: (e) => {
        e.preventDefault();
        const data = Object.fromEntries([...new FormData(e.target)].map(([k, v]) => [k, v.trim()]));
        go({ ...data, offset: '' });
      },
    },
    h('label', {}, 'Type', typeSelect),
    h('label', { class: 'grow' }, 'Filter', text('where', 'flow > 100 and efficiency < 0.6 (needs a type)')),
    h('label', {}, 'Parent', text('parent', 'parent id')),
    h('label', {}, 'Search id', text('q', 'part of an id', { type: 'search' })),
    h('button', { type: 'submit' }, 'Apply'),
    h('a', { href: '#/fleet', class: 'button secondary' }, 'Clear'),
  );

  const staleInput = h('input', {
    type: 'number',
    min: '1',
    value: String(staleMinutes()),
    class: 'short',
    'aria-label': 'stale after minutes',
    onchange: (e) => {
      if (Number(e.target.value) > 0) setStaleMinutes(Number(e.target.value));
      load();
    },
  });
  const result = h('div', { class: 'result' });
  const alarmSummary = h('p', { class: 'alarm-summary', id: 'fleet-alarms' }, 'Open alarms: ', h('span', { class: 'muted' }, 'loading…'));
  append(
    root,
    h('h1', {}, 'Fleet'),
    alarmSummary,
    typeCards,
    form,
    h('p', { class: 'muted small', id: 'stale-note' },
      'A twin is marked stale after its type\'s ', h('code', {}, 'stale_after'),
      ' (declared, or three times its usual reporting gap); types without enough data yet: after ', staleInput, ' min.'),
    filters.parent &&
      h('p', { class: 'crumbs' }, 'Children of ', link('#/twin/', filters.parent), ' · ', h('a', { href: '#/fleet' }, 'all twins')),
    result,
  );

  async function load() {
    const searching = !!filters.q;
    const { type, where, parent } = filters;
    const query = { type, where, parent, limit: searching ? SEARCH_SCAN : PAGE, offset: searching ? 0 : offset };
    let page;
    let alarms;
    try {
      [page, alarms] = await Promise.all([api('api/twins', { query: { ...query, values: true }, signal }), openAlarms()]);
    } catch (err) {
      if (err.name === 'AbortError') return;
      result.replaceChildren(errorBox(err));
      return;
    }
    let items = page.items;
    let note = `${page.total} twin${page.total === 1 ? '' : 's'}`;
    if (searching) {
      const needle = filters.q.toLowerCase();
      items = items.filter((t) => t.id.toLowerCase().includes(needle));
      note = `${items.length} of ${page.total} matching '${filters.q}'`;
      if (page.total > SEARCH_SCAN) note += ` (searched the first ${SEARCH_SCAN}; narrow with a type or filter)`;
      if (!items.length) {
        const exact = await api(twinPath(filters.q), { signal }).catch(() => null);
        if (exact) items = [exact]; // the id exactly, beyond the scanned twins
      }
    } else if (page.total > PAGE) {
      note = `${offset + 1}–${offset + items.length} of ${page.total} twins`;
    }
    const rows = items.map((t) =>
      h(
        'tr',
        { 'data-twin': t.id },
        h('td', {}, link('#/twin/', t.id), ' ', alarmMarker(t.id, alarms.byTwin.get(t.id))),
        h('td', {}, t.type),
        h('td', { class: 'keyvalues' }, keyValues(t, specs[t.type])),
        h('td', { class: 'spark-cell', 'data-spark': t.id }),
        h('td', {}, t.parent ? link('#/twin/', t.parent) : h('span', { class: 'muted' }, '—')),
        h('td', {}, freshness(t.updated, staleAfter[t.type])),
        h('td', {}, hasChildren(t.type) ? h('a', { href: `#/fleet?${qs({ parent: t.id })}` }, 'children') : null),
      ),
    );
    const pager = searching || page.total <= PAGE ? null : h(
      'div',
      { class: 'pager' },
      h('button', { type: 'button', disabled: offset === 0, onclick: () => go({ offset: Math.max(0, offset - PAGE) }) }, '‹ previous'),
      h('button', { type: 'button', disabled: offset + PAGE >= page.total, onclick: () => go({ offset: offset + PAGE }) }, 'next ›'),
    );
    replace(
      result,
      h('p', { class: 'muted', id: 'fleet-count' }, note),
      alarms.partial && h('p', { class: 'muted small' }, `Alarm markers show the newest ${ALARM_SCAN} open alarms.`),
      items.length
        ? table('twins', ['Twin', 'Type', 'Key values', 'Last hour', 'Parent', 'Last update', ''], rows)
        : h('p', { class: 'empty' }, 'No twins match.'),
      pager,
    );
    sparklines(items);
  }

  /** Each row's first key value over the last hour, drawn once the table is on screen. */
  function sparklines(items) {
    for (const t of items) {
      const name = t.values && Object.keys(t.values)[0];
      const cell = result.querySelector(`[data-spark="${CSS.escape(t.id)}"]`);
      if (!name || !cell) continue;
      const query = { names: name, from: Date.now() - SPARK_MS, every: SPARK_EVERY, agg: 'last' };
      api(twinPath(t.id, '/history'), { query, signal })
        .then((history) => {
          cell.replaceChildren(sparkline(history.series[name], null, { width: 96, height: 24 }));
          cell.title = `${name}, last hour`;
        })
        .catch(() => {});
    }
  }

  async function refreshCounts() {
    const fresh = await api('api/types', { signal }).catch(() => null);
    for (const t of fresh || []) {
      const el = typeCards.querySelector(`[data-count="${CSS.escape(t.name)}"]`);
      if (el) el.textContent = String(t.twins);
    }
  }

  /** Open alarms grouped by twin, and the counts per severity for the summary. */
  async function openAlarms() {
    const [list, counts] = await Promise.all([
      api('api/alarms', { query: { state: 'open', limit: ALARM_SCAN }, signal }),
      api('api/alarms/counts', { signal }),
    ]);
    replace(alarmSummary, h('a', { href: '#/alarms' }, 'Open alarms'), ': ', countBadges(counts));
    const byTwin = new Map();
    for (const a of list.items) byTwin.set(a.twin, [...(byTwin.get(a.twin) || []), a]);
    return { byTwin, partial: list.total > list.items.length };
  }

  await load();
  listen({ kinds: 'alarm' }, { alarm: coalesce(load, LIVE_MS, signal) }, signal);
  const timer = setInterval(() => {
    if (document.visibilityState === 'visible') load().then(refreshCounts);
  }, REFRESH_MS);
  signal.addEventListener('abort', () => clearInterval(timer));
}

/** A twin's key values with their units ('flow 96 m3/h'). */
function keyValues(twin, spec) {
  const unit = (n) => (spec?.properties[n] || spec?.parameters[n] || spec?.derived[n] || {}).unit || spec?.model?.units?.[n] || '';
  return Object.entries(twin.values || {}).map(([name, value]) =>
    h('span', { class: 'kv', 'data-key': name },
      h('span', { class: 'k' }, breakable(name)), ' ', h('span', { class: 'v' }, fmt(value)), unit(name) && h('span', { class: 'u' }, ' ', unit(name))));
}

/** A marker of a twin's open alarms (count, coloured by the worst severity), linking to them. */
function alarmMarker(twin, alarms) {
  if (!alarms?.length) return null;
  const severity = worst(alarms);
  const active = alarms.filter((a) => a.state === 'active').length;
  return h(
    'a',
    {
      class: `alarm-marker sev-${severity}`,
      'data-severity': severity,
      href: `#/alarms?${qs({ twin, state: 'open' })}`,
      title: `${alarms.length} open alarm${alarms.length === 1 ? '' : 's'} (${active} active): ${alarms.map((a) => a.rule).join(', ')}`,
    },
    `⚠ ${alarms.length}`,
  );
}
