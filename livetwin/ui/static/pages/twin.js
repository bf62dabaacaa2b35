// Twin detail: current values (live over Server-Sent Events), hierarchy, charts of history with
// uncertainty bands, desired vs reported values (types with commands), its open alarms
// (acknowledge in place) and its recent events.
import { api, coalesce, errorBox, listen, qs, twinPath } from '../api.js';
import { calibrationCard } from '../calibration.js';
import { bandsOf, figure, loadPlotly, withBands } from '../chart.js';
import { desiredCard } from '../desired.js';
import { ago, breakable, fmt, freshness, h, link, localTime, replace, replaceQuery, table } from '../dom.js';
import { whatIfCard } from '../whatif.js';
import { alarmButtons, severityBadge, stateBadge } from './alarms.js';

const RANGES = [
  ['15m', 'last 15 min', 15 * 60e3],
  ['1h', 'last hour', 3600e3],
  ['6h', 'last 6 hours', 6 * 3600e3],
  ['24h', 'last 24 hours', 86400e3],
  ['7d', 'last 7 days', 7 * 86400e3],
  ['30d', 'last 30 days', 30 * 86400e3],
  ['all', 'all time', null],
  ['custom', 'custom…', null],
];
const STEPS = ['1s', '5s', '10s', '30s', '1m', '5m', '15m', '30m', '1h', '3h', '6h', '12h', '1d'];
const STEP_MS = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 };
const stepMs = (step) => Number(step.slice(0, -1)) * STEP_MS[step.slice(-1)];
const EVERY = ['auto', 'raw', '1s', '10s', '1m', '5m', '15m', '1h', '6h', '1d'];
const AGGS = ['auto', 'avg', 'min', 'max', 'last', 'count', 'sum'];
const MAX_BUCKETS = 400;
const LIVE_REDRAW_MS = 3000;

export async function render(root, { args: [id], params, signal }) {
  const twin = await api(twinPath(id), { signal });
  const [type, listed] = await Promise.all([api(`api/types/${encodeURIComponent(twin.type)}`, { signal }), api('api/types', { signal })]);
  const staleAfter = listed.find((t) => t.name === twin.type)?.stale_after ?? null;
  const { spec, columns } = type;
  const bands = bandsOf(columns);
  const bandEdges = new Set([...bands].flatMap((n) => [`${n}_lower`, `${n}_upper`]));
  const chartable = columns.filter((c) => !bandEdges.has(c));
  let lastTs = twin.updated ? Date.parse(twin.updated) : -Infinity;

  // ---- header, hierarchy, current values --------------------------------------------------
  const updated = h('span', { id: 'updated' }, freshness(twin.updated, staleAfter));
  const live = h('span', { class: 'live off', id: 'live' }, 'connecting…');
  root.append(
    h('p', { class: 'crumbs', id: 'crumbs' }, h('a', { href: '#/fleet' }, 'Fleet')),
    h('h1', { class: 'twin-id' }, twin.id),
    h(
      'p',
      { class: 'meta' },
      link('#/types/', twin.type, `${twin.type} v${twin.version}`),
      ' · created ', localTime(Date.parse(twin.created)),
      ' · updated ', updated, ' ', live,
    ),
  );
  ancestors(twin, signal).then((chain) => {
    root.querySelector('#crumbs')?.append(...chain.flatMap((t) => [' › ', link('#/twin/', t)]), ' › ', twin.id);
  });

  // Values in four groups, each with its unit: measured properties, derived values, parameters
  // (calibrated ones with their std and 95 % band) and estimated virtual sensors (with band).
  // A banded name shows "value ± std [lower .. upper]" in one row; its _std, _lower and _upper
  // columns get no rows of their own.
  const calibrated = spec.model ? await api(twinPath(id, '/calibration'), { signal }).catch(() => null) : null;
  const estimates = { ...(calibrated?.parameters || {}), ...(calibrated?.virtual_sensors || {}) };
  const estimatedNames = Object.keys(calibrated?.virtual_sensors || {});
  const unitOf = (n) =>
    (spec.properties[n] || spec.parameters[n] || spec.derived[n] || {}).unit || estimates[n]?.unit || spec.model?.units?.[n] || '';
  const current = { ...twin.properties, ...twin.parameters, ...twin.derived };
  for (const [name, e] of Object.entries(estimates)) {
    // calibration publishes step times newer telemetry may have passed: its view is the newest
    Object.assign(current, { [name]: e.value, [`${name}_std`]: e.std, [`${name}_lower`]: e.lower, [`${name}_upper`]: e.upper });
  }
  const bandParts = new Set([...bands].flatMap((n) => [`${n}_lower`, `${n}_upper`, `${n}_std`]));
  const bandText = (name) =>
    current[`${name}_lower`] == null ? '' : `[${fmt(current[`${name}_lower`])} .. ${fmt(current[`${name}_upper`])}]`;
  const stdText = (name) => (current[`${name}_std`] == null ? '' : `± ${fmt(current[`${name}_std`])}`);
  const valueCard = (title, names, extra, note) => {
    const shown = names.filter((name) => !bandParts.has(name));
    return h(
      'section',
      { class: 'card values', 'data-group': title.toLowerCase() },
      h('h2', {}, title, note && h('span', { class: 'muted small' }, ' ', note)),
      shown.length
        ? h('table', {}, h('tbody', {}, shown.map((name) => [
            h('tr', { 'data-name': name, class: bands.has(name) ? 'banded' : null },
              h('th', { title: extra?.(name) || '' }, breakable(name)),
              h('td', { class: 'value num' }, fmt(current[name])),
              h('td', { class: 'unit muted' }, unitOf(name))),
            bands.has(name) &&
              h('tr', { class: 'band-row' },
                h('td', { colspan: '3' },
                  h('span', { class: 'band-std', 'data-std': name }, stdText(name)), ' ',
                  h('span', { class: 'band-range', 'data-band': name }, bandText(name)))),
          ])))
        : h('p', { class: 'muted' }, 'none'),
    );
  };
  const exprOf = (n) => spec.derived[n]?.expr;
  const measured = Object.keys(spec.properties);
  const values = h(
    'div',
    { class: 'groups' },
    valueCard('Measured', measured),
    valueCard('Derived', Object.keys(twin.derived), exprOf),
    valueCard('Parameters', Object.keys(twin.parameters), (n) => (estimates[n] ? 'calibrated' : 'set')),
    estimatedNames.length > 0 && valueCard('Estimated', estimatedNames, () => 'virtual sensor: estimated by the model', '95 % band'),
  );
  root.append(values);

  // ---- calibration (types with a model) ------------------------------------------------------
  const showEstimates = (view) => {
    for (const [name, e] of Object.entries({ ...view.parameters, ...view.virtual_sensors })) {
      for (const [key, suffix] of [['std', '_std'], ['lower', '_lower'], ['upper', '_upper'], ['value', '']]) {
        if (current[name + suffix] !== e[key]) show(name + suffix, e[key]); // defined below; called later
      }
    }
  };
  const calibration = calibrated ? calibrationCard(twin, spec, calibrated, signal, showEstimates) : null;
  if (calibration) root.append(calibration.element);

  // ---- desired vs reported (only types with a commands: section) ---------------------------
  const desired = spec.commands ? desiredCard(id, spec, current, signal) : null;
  if (desired) root.append(desired.element);

  // ---- open alarms -----------------------------------------------------------------------------
  const alarmList = h('div', { id: 'twin-alarms' });
  root.append(
    h('section', { class: 'card' },
      h('h2', {}, 'Open alarms ', h('a', { class: 'small', href: `#/alarms?${qs({ twin: id, state: 'all' })}` }, 'all alarms of this twin')),
      alarmList),
  );
  async function loadAlarms() {
    try {
      const page = await api('api/alarms', { query: { twin: id, state: 'open', limit: 50 }, signal });
      replace(
        alarmList,
        page.items.length
          ? table('alarms', ['Severity', 'State', 'Rule and message', 'Raised', ''], page.items.map((a) => {
              const out = h('div', { class: 'row-error' });
              return h('tr', { 'data-alarm': String(a.id) },
                h('td', {}, severityBadge(a.severity)),
                h('td', {}, stateBadge(a.state)),
                h('td', {}, h('strong', {}, a.rule), h('div', { class: 'msg' }, a.message)),
                h('td', { class: 'nowrap', title: localTime(Date.parse(a.raised), true) }, ago(Date.parse(a.raised))),
                h('td', { class: 'act' }, alarmButtons(a, out, () => loadAlarms(), signal), out));
            }))
          : h('p', { class: 'muted' }, 'No open alarms.'),
        page.total > page.items.length && h('p', { class: 'muted small' }, `${page.items.length} of ${page.total} shown.`),
      );
    } catch (err) {
      if (err.name !== 'AbortError') replace(alarmList, errorBox(err));
    }
  }
  const reloadAlarms = coalesce(loadAlarms, 300, signal);

  if ((spec.children || []).length) {
    const kids = h('section', { class: 'card' }, h('h2', {}, 'Children'), h('p', { class: 'muted' }, 'loading…'));
    root.append(kids);
    api('api/twins', { query: { parent: twin.id, limit: 100 }, signal })
      .then((page) => {
        kids.lastChild.replaceWith(
          page.items.length
            ? h(
                'p',
                { class: 'children' },
                page.items.flatMap((t, i) => [i ? ', ' : '', link('#/twin/', t.id)]),
                page.total > page.items.length &&
                  h('span', {}, ' … ', h('a', { href: `#/fleet?${qs({ parent: twin.id })}` }, `all ${page.total}`)),
              )
            : h('p', { class: 'muted' }, 'none yet'),
        );
      })
      .catch((err) => err.name !== 'AbortError' && kids.lastChild.replaceWith(errorBox(err)));
  }

  // ---- chart -------------------------------------------------------------------------------
  const wanted = (params.get('names') || '').split(',').filter((n) => chartable.includes(n));
  const properties = Object.keys(spec.properties).filter((n) => chartable.includes(n));
  // a calibrated twin first shows its calibrated parameters with their bands (b1..b4 of a line)
  const calibratedParams = Object.keys(calibrated?.parameters || {}).filter((n) => chartable.includes(n));
  const selected = new Set(
    wanted.length
      ? wanted
      : calibratedParams.length
        ? calibratedParams.slice(0, 4)
        : [...new Set([...[...bands].slice(0, 1), ...properties, ...chartable])].slice(0, 2),
  );
  const recent = Date.now() - lastTs < 3600e3;
  const select = (name, options, value) =>
    h('select', { name }, options.map(([v, label]) => h('option', { value: v, selected: v === value }, label ?? v)));
  const chip = (n) =>
    h(
      'label',
      { class: 'chip' },
      h('input', { type: 'checkbox', name: 'name', value: n, checked: selected.has(n) }),
      n,
      bands.has(n) && h('span', { class: 'band-mark', title: `band from ${n}_lower to ${n}_upper` }, '±'),
    );
  const when = (name) => h('input', { type: 'datetime-local', name, step: '1', value: params.get(name) || '' });
  const controls = h(
    'form',
    { class: 'chart-controls', onsubmit: (e) => e.preventDefault(), onchange: () => draw() },
    h('fieldset', { class: 'names' }, h('legend', {}, 'Names'), chartable.map(chip)),
    h('label', {}, 'Range', select('range', RANGES, params.get('range') || (recent ? '1h' : 'all'))),
    h('label', { class: 'custom' }, 'From', when('from')),
    h('label', { class: 'custom' }, 'To', when('to')),
    h('label', {}, 'Every', select('every', EVERY.map((e) => [e]), params.get('every') || 'auto')),
    h('label', {}, 'Aggregate', select('agg', AGGS.map((a) => [a, a === 'auto' ? 'auto (per signal)' : a]), params.get('agg') || 'auto')),
  );
  const chart = h('div', { id: 'chart', class: 'chart' });
  const chartNote = h('p', { class: 'muted small', id: 'chart-note' });
  const chartError = h('div', { id: 'chart-error' });
  root.append(h('section', { class: 'card' }, h('h2', {}, 'History'), controls, chartError, chart, chartNote));
  if (spec.model) root.append(whatIfCard(twin, spec, signal)); // forecasts from the calibrated state
  signal.addEventListener('abort', () => window.Plotly?.purge(chart));

  let drawing = 0;
  async function draw() {
    const form = new FormData(controls);
    const names = form.getAll('name');
    const range = form.get('range');
    controls.classList.toggle('show-custom', range === 'custom');
    controls.elements.agg.disabled = form.get('every') === 'raw';
    const custom = range === 'custom' ? { from: form.get('from'), to: form.get('to') } : {};
    replaceQuery({ names: names.join(','), range, every: form.get('every'), agg: form.get('agg'), ...custom });
    const run = ++drawing;
    chartError.replaceChildren();
    if (!names.length) {
      window.Plotly?.purge(chart);
      chartNote.textContent = 'Pick one or more names to chart.';
      return;
    }
    const now = Date.now();
    let from = '';
    let to = '';
    let span;
    if (range === 'custom') {
      from = form.get('from') ? new Date(form.get('from')).getTime() : '';
      to = form.get('to') ? new Date(form.get('to')).getTime() : '';
      span = (to || now) - (from || Date.parse(twin.created));
    } else if (range === 'all') {
      span = Math.max(lastTs, now) - Date.parse(twin.created);
    } else {
      span = RANGES.find(([key]) => key === range)[2];
      from = now - span;
    }
    const shown = [from || Date.parse(twin.created), to || Math.max(lastTs, now)];
    let every = form.get('every');
    if (every === 'auto') every = STEPS.find((s) => span / stepMs(s) <= MAX_BUCKETS) || '1d';
    const query = { names: withBands(names, bands).join(','), from, to, every: every === 'raw' ? '' : every, agg: form.get('agg') };
    try {
      const [history, Plotly] = await Promise.all([api(twinPath(id, '/history'), { query, signal }), loadPlotly()]);
      if (run !== drawing || signal.aborted) return;
      const fig = figure(history, names, bands, unitOf, shown, every);
      await Plotly.react(chart, fig.data, fig.layout, fig.config);
      chart.dataset.points = String(history.ts.length);
      chartNote.textContent = `${history.ts.length} point${history.ts.length === 1 ? '' : 's'}` +
        (every === 'raw' ? ' (raw)' : `: ${aggText(history, names, form.get('agg'), every)}`) +
        (names.some((n) => bands.has(n)) ? '; dark shade: 95 % uncertainty band (lower to upper)' : '') +
        '. Drag to zoom, double-click to reset.';
    } catch (err) {
      if (err.name === 'AbortError' || run !== drawing) return;
      window.Plotly?.purge(chart);
      chartNote.textContent = '';
      chartError.replaceChildren(errorBox(err));
    }
  }

  // ---- recent events -------------------------------------------------------------------------
  const events = h('div', { id: 'events' });
  root.append(h('section', { class: 'card' }, h('h2', {}, 'Recent events'), events));
  const pairs = (obj) => Object.entries(obj).map(([k, v]) => `${k}=${fmt(v)}`).join(', ');
  async function loadEvents() {
    try {
      const list = await api(twinPath(id, '/observations'), { query: { limit: 20 }, signal });
      events.replaceChildren(
        list.length
          ? table(
              'events',
              ['Time', 'Observed', 'Derived'],
              list.map((e) =>
                h(
                  'tr',
                  {},
                  h('td', { class: 'nowrap' }, localTime(e.ts, true)),
                  h('td', {}, pairs(e.values)),
                  h('td', { class: 'muted' }, pairs(e.derived)),
                ),
              ),
            )
          : h('p', { class: 'muted' }, 'No events yet.'),
      );
    } catch (err) {
      if (err.name !== 'AbortError') events.replaceChildren(errorBox(err));
    }
  }

  await Promise.all([draw(), loadEvents(), loadAlarms(), desired?.loaded, calibration?.loaded]);

  // ---- live updates ----------------------------------------------------------------------------
  let redraw = null;
  const later = () => {
    redraw ??= setTimeout(() => {
      redraw = null;
      const range = controls.elements.range.value;
      if (range !== 'custom') draw();
      loadEvents();
    }, LIVE_REDRAW_MS);
  };
  const show = (name, value) => {
    current[name] = value;
    const base = name.replace(/_(lower|upper|std)$/, '');
    if (base !== name && bands.has(base)) {
      const range = values.querySelector(`[data-band="${CSS.escape(base)}"]`);
      if (range) range.textContent = bandText(base);
      const std = values.querySelector(`[data-std="${CSS.escape(base)}"]`);
      if (std) std.textContent = stdText(base);
    }
    const cell = values.querySelector(`tr[data-name="${CSS.escape(name)}"] .value`);
    if (!cell) return;
    cell.textContent = fmt(value);
    cell.classList.remove('flash');
    void cell.offsetWidth; // restart the highlight animation
    cell.classList.add('flash');
  };
  const setUpdated = (iso) => updated.replaceChildren(freshness(iso, staleAfter));
  const setLive = (text, on) => {
    live.textContent = text;
    live.className = on ? 'live on' : 'live off';
  };

  const onState = (msg) => {
    if (msg.twin !== id) return;
    if (calibration && Object.keys(msg.values).some((n) => n.endsWith('_std'))) calibration.refresh();
    if (msg.ts >= lastTs) {
      lastTs = msg.ts;
      for (const [name, value] of Object.entries(msg.values)) show(name, value);
      setUpdated(new Date(msg.ts).toISOString());
    }
    desired?.refresh();
    later();
  };
  const onReset = async () => {
    // events were missed while disconnected: read the whole state again
    const fresh = await api(twinPath(id), { signal }).catch(() => null);
    if (!fresh) return;
    for (const group of [fresh.properties, fresh.parameters, fresh.derived]) {
      for (const [name, value] of Object.entries(group)) show(name, value);
    }
    lastTs = fresh.updated ? Date.parse(fresh.updated) : lastTs;
    setUpdated(fresh.updated);
    later();
    reloadAlarms();
    desired?.refresh();
  };
  listen({ twin: id, kinds: 'state,alarm' }, { state: onState, alarm: reloadAlarms, reset: onReset }, signal, setLive);
  const tick = setInterval(() => setUpdated(Number.isFinite(lastTs) ? new Date(lastTs).toISOString() : null), 15_000);
  signal.addEventListener('abort', () => {
    clearInterval(tick);
    clearTimeout(redraw);
  });
}

/** What the chart's points are, per name: 'b1 last per 10s; w1 mean (min–max shaded) per 10s'. */
function aggText(history, names, agg, every) {
  if (!history.aggs) return `${agg} per ${every}`;
  const groups = {};
  for (const n of names) (groups[history.aggs[n]] ??= []).push(n);
  const words = { last: 'measured (last value)', avg: 'mean (min–max shaded)' };
  return Object.entries(groups).map(([a, ns]) => `${ns.join(', ')}: ${words[a] || a} per ${every}`).join('; ');
}

/** The ids above `twin`, root first (at most 20 levels). */
async function ancestors(twin, signal) {
  const chain = [];
  let parent = twin.parent;
  while (parent && chain.length < 20) {
    chain.unshift(parent);
    parent = (await api(twinPath(parent), { signal }).catch(() => null))?.parent;
  }
  return chain;
}
