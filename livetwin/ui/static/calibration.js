// The twin page's calibration card (types with a model): the last and the next run, its status
// for this twin, the noise it assumes, and each calibrated parameter with its std, 95 % band and a
// sparkline of the band over the last hour (is it narrowing? is it still at its prior?).
import { api, coalesce, errorBox, twinPath } from './api.js';
import { sparkline } from './chart.js';
import { ago, breakable, fmt, h, localTime, replace } from './dom.js';
import { scheduleText } from './schedules.js';

const SPARK_MS = 3600e3;
const SPARK_EVERY = '30s';
const DEFAULT_PRIOR = 0.3; // the job's default prior std: 30 % of the parameter's value
const AT_PRIOR = 0.9; // a std still above 90 % of the prior has learned little from the data

/** { element, refresh() }; `onView(view)` hears every refreshed calibration view. */
export function calibrationCard(twin, spec, first, signal, onView = () => {}) {
  const body = h('div', { id: 'calibration-body' });
  const element = h('section', { class: 'card', id: 'calibration' }, h('h2', {}, 'Calibration'), body);
  const schedule = `calibrate.every.${twin.type}`;

  async function render(view) {
    const [next, history] = await Promise.all([
      spec.calibration?.every ? api(`api/schedules/${encodeURIComponent(schedule)}`, { signal }).catch(() => null) : null,
      sparkHistory(twin.id, Object.keys(view.parameters), signal),
    ]);
    replace(body, summary(twin, spec, view, next), parameterTable(spec, view, history), noise(spec));
  }

  const refresh = coalesce(async () => {
    try {
      const view = await api(twinPath(twin.id, '/calibration'), { signal });
      onView(view);
      await render(view);
    } catch (err) {
      if (err.name !== 'AbortError') replace(body, errorBox(err));
    }
  }, 1500, signal);
  const loaded = render(first).catch((err) => err.name !== 'AbortError' && replace(body, errorBox(err)));
  return { element, refresh, loaded };
}

/** The band of every calibrated parameter over the last hour (newest value per 30 s). */
function sparkHistory(id, params, signal) {
  const names = params.flatMap((p) => [p, `${p}_lower`, `${p}_upper`]).join(',');
  const query = { names, from: Date.now() - SPARK_MS, every: SPARK_EVERY, agg: 'last' };
  return api(twinPath(id, '/history'), { query, signal });
}

/** Last run (status for this twin, window, steps), next run, and the filter's progress. */
function summary(twin, spec, view, next) {
  const run = view.runs[0];
  const when = (iso) => h('span', { title: localTime(Date.parse(iso), true) }, ago(Date.parse(iso)));
  const lines = [];
  if (!run) {
    lines.push(h('p', { class: 'muted' }, 'Not calibrated yet.'));
  } else {
    const failed = run.failed?.[twin.id];
    const skipped = run.skipped?.[twin.id];
    const own = failed ? 'failed' : skipped ? 'skipped' : run.status === 'no-data' ? 'no-data' : 'calibrated';
    lines.push(
      h('p', { class: 'cal-last' },
        h('span', { class: `badge run-${own === 'calibrated' ? 'succeeded' : own === 'failed' ? 'failed' : 'queued'}`, 'data-status': own }, own),
        ' last run ', when(run.finished || run.started),
        ` · ${run.calibrated} of ${run.twins} twins calibrated over ${run.steps} steps`,
        run.window && ` (${localTime(Date.parse(run.window.from))} – ${localTime(Date.parse(run.window.to))})`,
        Object.keys(run.failed || {}).length > 0 && ` · ${Object.keys(run.failed).length} failed`,
        Object.keys(run.skipped || {}).length > 0 && ` · ${Object.keys(run.skipped).length} skipped`,
        ' · ', h('a', { href: `#/jobs?function=calibrate` }, 'runs')),
    );
    if (failed || skipped) lines.push(h('p', { class: 'run-error small' }, `${twin.id}: ${failed || skipped}`));
  }
  lines.push(
    h('p', { class: 'cal-next' },
      'Next run: ',
      next ? scheduleText(next) : spec.calibration?.continuous ? 'within a second of new measurements' : 'on request (POST …/calibrate)'),
  );
  if (view.filter) {
    lines.push(h('p', { class: 'muted small' },
      `${view.filter.estimator.toUpperCase()} on ${view.model}; calibrated up to ${localTime(Date.parse(view.filter.calibrated_until), true)}`,
      view.filter.failed ? ' · the filter failed and restarts from its prior' : ''));
  }
  return lines;
}

/** Calibrated parameters: value ± std, band, unit, band sparkline, and whether still at the prior. */
function parameterTable(spec, view, history) {
  const rows = Object.entries(view.parameters).map(([name, p]) => {
    const declared = spec.parameters[name] || {};
    const prior = spec.calibration?.prior_std?.[name] ?? DEFAULT_PRIOR * Math.abs(declared.value);
    const atPrior = p.std === null || p.std >= AT_PRIOR * prior;
    const series = (n) => history.series[n] || [];
    return h('tr', { 'data-param': name },
      h('th', {}, breakable(name)),
      h('td', { class: 'num' }, fmt(p.value)),
      h('td', { class: 'num muted' }, p.std === null ? '—' : `± ${fmt(p.std)}`),
      h('td', { class: 'nowrap muted' }, p.lower === null ? '—' : `${fmt(p.lower)} .. ${fmt(p.upper)}`),
      h('td', { class: 'unit muted' }, p.unit),
      h('td', { class: 'spark-cell' }, sparkline(series(name), [series(`${name}_lower`), series(`${name}_upper`)])),
      h('td', { class: 'small' }, atPrior
        ? h('span', { class: 'badge stale', title: `std ${fmt(p.std)} vs prior ${fmt(prior)}` }, 'at prior')
        : h('span', { class: 'badge fresh', title: `std ${fmt(p.std)} vs prior ${fmt(prior)}` }, `${Math.round((1 - p.std / prior) * 100)} % narrower`)),
    );
  });
  return h('div', { class: 'scroll' },
    h('table', { class: 'calibrated' },
      h('thead', {}, h('tr', {}, ['Parameter', 'Value', 'Std', '95 % band', 'Unit', 'Band, last hour', 'vs prior'].map((c) => h('th', {}, c)))),
      h('tbody', {}, rows)));
}

/** The noise calibration assumes: declared per name, or estimated from the data. */
function noise(spec) {
  const c = spec.calibration || {};
  const pairs = (obj) => Object.entries(obj || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(', ');
  return h('p', { class: 'muted small cal-noise' },
    'Measurement noise: ', pairs(c.measurement_noise) || 'estimated from the data',
    ' · process noise per step: ', pairs(c.process_noise) || 'the default random walk',
    c.prior_std && Object.keys(c.prior_std).length ? ` · prior std: ${pairs(c.prior_std)}` : ' · prior std: 30 % of each value');
}
