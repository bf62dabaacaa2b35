// Models and lineage: registered models, a model's versions with their metadata, and the
// lineage graph from a twin value (twin, name, ts) or from a node id.
import { api, errorBox, qs, twinPath } from '../api.js';
import { append, h, link, localTime, navigate, replace, table } from '../dom.js';
import { collapse, counted, drawLineage, panZoom } from '../lineage.js';

const NARROW_PX = 640; // below this the graph's layers stack top to bottom
const EVENT_SCAN = 200; // recent events searched for a name's newest published value

const when = (iso) => (iso ? localTime(Date.parse(iso)) : '—');
const aliasBadge = (alias) => h('span', { class: 'badge alias', 'data-alias': alias }, alias);
const pairs = (obj) =>
  Object.entries(obj || {}).map(([k, v]) => h('span', { class: 'pair' }, h('code', {}, k), ' ', typeof v === 'object' ? JSON.stringify(v) : String(v)));

export async function renderList(root, { signal }) {
  const models = await api('api/models', { query: { archived: true }, signal });
  append(
    root,
    h('h1', {}, 'Models & lineage'),
    h('section', { class: 'card' },
      h('h2', {}, 'Registered models'),
      models.length
        ? table('models', ['Model', 'Kind', 'Versions', 'Latest', 'Aliases', 'Description'], models.map((m) =>
            h('tr', { 'data-model': m.name },
              h('td', {}, link('#/models/', m.name)),
              h('td', {}, m.kind),
              h('td', { class: 'num' }, String(m.versions)),
              h('td', { class: 'num' }, m.latest ? `v${m.latest}` : '—'),
              h('td', {}, Object.entries(m.aliases || {}).map(([alias, v]) => [aliasBadge(alias), ` v${v} `])),
              h('td', {}, m.description || ''))))
        : h('p', { class: 'empty' }, 'No models registered yet: POST /api/models/{name}/versions (see the API docs).')),
    lineageForms(new URLSearchParams()),
  );
}

export async function renderModel(root, { args: [name], params, signal }) {
  const archived = params.get('archived') === '1';
  const [versions, aliases] = await Promise.all([
    api(`api/models/${encodeURIComponent(name)}/versions`, { query: { archived, limit: 1000 }, signal }),
    api(`api/models/${encodeURIComponent(name)}/aliases`, { signal }).catch(() => null),
  ]);
  const toggle = h('label', { class: 'inline' },
    h('input', { type: 'checkbox', checked: archived, onchange: (e) => navigate(`#/models/${encodeURIComponent(name)}${e.target.checked ? '?archived=1' : ''}`) }),
    ' show archived versions');
  append(
    root,
    h('p', { class: 'crumbs' }, h('a', { href: '#/models' }, 'Models'), ' › ', name),
    h('h1', {}, name),
    h('p', { class: 'meta' }, `${versions.length} version${versions.length === 1 ? '' : 's'}${archived ? '' : ' (archived hidden)'} · `, toggle),
    h('div', { class: 'versions' }, [...versions].reverse().map((v) => versionCard(v, name))),
    aliases?.history?.length > 0 &&
      h('section', { class: 'card' }, h('h2', {}, 'Alias history'),
        table('aliases', ['When', 'Alias', 'Version', 'By'], aliases.history.map((e) =>
          h('tr', {}, h('td', { class: 'nowrap' }, when(e.at)), h('td', {}, e.alias), h('td', {}, e.version == null ? 'removed' : `v${e.version}`), h('td', {}, e.author || '—'))))),
  );
  for (const holder of root.querySelectorAll('.version-graph')) {
    const v = versions.find((x) => String(x.version) === holder.dataset.version);
    const svg = drawLineage(versionGraph(v), { width: holder.clientWidth, vertical: holder.clientWidth < NARROW_PX, onSelect: (n) => navigate(n.href) });
    holder.append(svg);
    panZoom(svg, { width: holder.clientWidth, focus: v.lineage });
  }
}

const TWINS_SHOWN = 12;

/** A version's lineage at a glance: its training data and parent versions, the version, and
 * the runs that used it folded per job; each node leads to the full graph or the parent. */
function versionGraph(v) {
  const self = v.lineage || `model:${v.name}/${v.version}`;
  const down = `#/lineage?${qs({ node: self, direction: 'down', depth: 1 })}`;
  const nodes = [{ id: self, kind: 'model', name: v.name, inputs: { version: v.version, kind: v.kind }, href: down }];
  const edges = [];
  if (v.training?.start) {
    nodes.push({ id: `${self}#training`, kind: 'data', name: `training data of ${v.name}`, inputs: { window: { start: Date.parse(v.training.start), end: Date.parse(v.training.end) } },
      href: `#/lineage?${qs({ node: self, direction: 'up' })}` });
    edges.push({ from: `${self}#training`, to: self });
  }
  for (const p of v.parents || []) {
    const id = `model:${p.name}/${p.version}`;
    nodes.push({ id, kind: 'model', name: p.name, inputs: { version: p.version }, href: `#/models/${encodeURIComponent(p.name)}` });
    edges.push({ from: id, to: self });
  }
  for (const use of v.used_by || []) {
    const id = `group:${use.kind}:${use.name}`;
    nodes.push({ id, kind: use.kind, name: use.name, count: use.count, first: Date.parse(use.first), last: Date.parse(use.last), href: down });
    edges.push({ from: self, to: id });
  }
  return { root: self, nodes, edges };
}

/** 'used by' of a version: runs per job (the newest one's lineage) and the twins it published. */
function usedBy(v) {
  if (!v.used_by?.length) return h('span', { class: 'muted' }, 'no run has used it yet');
  return v.used_by.map((use) => h('div', { class: 'use', 'data-job': use.name },
    `${use.count} run${use.count === 1 ? '' : 's'} of `, h('code', {}, use.name), ' · ',
    h('span', { class: 'nowrap' }, when(use.first)), ' → ', h('span', { class: 'nowrap' }, when(use.last)), ' · ',
    h('a', { href: `#/lineage?${qs({ node: use.newest, direction: 'up' })}` }, 'newest run'),
    use.twins.length > 0 && h('div', { class: 'twins-using' }, 'twins: ',
      use.twins.slice(0, TWINS_SHOWN).map((t) => [link('#/twin/', t, t), ' ']),
      use.twins.length > TWINS_SHOWN && h('span', { class: 'muted' }, `and ${use.twins.length - TWINS_SHOWN} more`))));
}

/** One version's metadata as a card, with its lineage and what uses it. */
function versionCard(v) {
  const node = v.lineage || `model:${v.name}/${v.version}`;
  const training = v.training || {};
  const row = (label, ...value) => [h('dt', {}, label), h('dd', {}, ...value)];
  return h(
    'article',
    { class: v.archived ? 'card version archived' : 'card version', 'data-version': String(v.version) },
    h('h2', {}, `v${v.version} `, v.aliases.map(aliasBadge), v.archived && h('span', { class: 'badge stale' }, 'archived')),
    h('dl', { class: 'meta-list' },
      row('kind', v.kind, v.flavor && ` · flavor ${v.flavor}`),
      row('created', when(v.created), v.author && ` by ${v.author}`),
      v.description && row('description', v.description),
      v.ref && row('ref', h('code', {}, v.ref)),
      v.code_hash && row('code hash', h('code', { title: v.code_hash }, v.code_hash.slice(0, 16))),
      row('training', training.start ? `${when(training.start)} → ${when(training.end)}` : '—', training.description && ` (${training.description})`),
      row('metrics', Object.keys(v.metrics || {}).length ? pairs(v.metrics) : '—'),
      Object.keys(v.hyperparameters || {}).length > 0 && row('hyperparameters', pairs(v.hyperparameters)),
      Object.keys(v.tags || {}).length > 0 && row('tags', pairs(v.tags)),
      v.parents.length > 0 && row('parents', v.parents.map((p) => h('a', { href: `#/models/${encodeURIComponent(p.name)}` }, `${p.name} v${p.version} `))),
      v.artifacts.length > 0 && row('artifacts', v.artifacts.map((a) =>
        a.uploaded
          ? h('a', { href: `api/models/${encodeURIComponent(v.name)}/versions/${v.version}/artifacts/${encodeURIComponent(a.filename)}` }, `${a.filename} `)
          : h('span', { class: 'muted', title: 'declared, not uploaded yet' }, `${a.filename} (missing) `))),
      row('used by', usedBy(v)),
      row('lineage',
        h('a', { class: 'lineage-down', href: `#/lineage?${qs({ node, direction: 'down', depth: 1 })}` }, 'runs that used it'), ' · ',
        h('a', { href: `#/lineage?${qs({ node, direction: 'up' })}` }, 'where it came from'))),
    h('div', { class: 'graph version-graph', 'data-version': String(v.version) }),
  );
}

/** The two ways into the graph: a twin's value, or a node id. */
function lineageForms(params) {
  const input = (name, placeholder, extra = {}) =>
    h('input', { name, value: params.get(name) || '', placeholder, autocomplete: 'off', spellcheck: 'false', ...extra });
  const submit = (e) => {
    e.preventDefault();
    navigate(`#/lineage?${qs(Object.fromEntries([...new FormData(e.target)].map(([k, v]) => [k, v.trim()])))}`);
  };
  return h(
    'section',
    { class: 'card' },
    h('h2', {}, 'Trace a value or walk from a node'),
    h('form', { class: 'filters lineage-value', onsubmit: submit },
      h('label', {}, 'Twin', input('twin', 'line-2', { required: true })),
      h('label', {}, 'Name', input('name', 'b1', { required: true })),
      h('label', { class: 'grow' }, 'Time', input('ts', 'ISO 8601 or epoch ms; blank: the newest published value')),
      h('button', { type: 'submit' }, 'Trace value')),
    h('form', { class: 'filters lineage-node', onsubmit: submit },
      h('label', { class: 'grow' }, 'Node id', input('node', 'model:roller_line/1 or a run id', { required: true })),
      h('label', {}, 'Direction',
        h('select', { name: 'direction' }, [['up', 'up (inputs)'], ['down', 'down (what it fed)']].map(([v, l]) =>
          h('option', { value: v, selected: v === (params.get('direction') || 'up') }, l)))),
      h('label', {}, 'Depth', input('depth', '10', { type: 'number', min: '1', max: '100', class: 'short' })),
      h('button', { type: 'submit' }, 'Walk')),
  );
}

export async function renderLineage(root, { params, signal }) {
  append(root, h('p', { class: 'crumbs' }, h('a', { href: '#/models' }, 'Models'), ' › lineage'), h('h1', {}, 'Lineage'), lineageForms(params));
  const out = h('section', { class: 'card', id: 'lineage' });
  root.append(out);
  const node = params.get('node');
  const twin = params.get('twin');
  const name = params.get('name');
  if (!node && !(twin && name)) {
    out.append(h('p', { class: 'muted' }, 'Trace a twin value to the run, data window and model version that produced it, or walk from a node.'));
    return;
  }
  const depth = params.get('depth') || '';
  let graph;
  let path;
  try {
    if (node) {
      path = `api/lineage/${encodeURIComponent(node)}`;
      graph = await api(path, { query: { direction: params.get('direction') || 'up', depth }, signal });
    } else {
      const ts = params.get('ts') || (await newestPublished(twin, name, signal));
      path = `api/lineage/value?${qs({ twin, name, ts })}`;
      graph = await api('api/lineage/value', { query: { twin, name, ts, depth }, signal });
    }
  } catch (err) {
    if (err.name !== 'AbortError') out.append(errorBox(err));
    return;
  }
  const details = h('div', { class: 'node-details', id: 'node-details' });
  const holder = h('div', { class: 'graph' });
  const graphml = `${path}${path.includes('?') ? '&' : '?'}${qs({ format: 'graphml', direction: node ? params.get('direction') || 'up' : '', depth })}`;
  const folded = collapse(graph);
  const fold = h('input', { type: 'checkbox', name: 'fold', checked: true, disabled: !folded.collapsed, onchange: () => draw() });
  let view = null;
  const tool = (label, title, action) => h('button', { type: 'button', class: 'secondary', title, 'aria-label': title, onclick: () => view && action(view) }, label);
  append(
    out,
    h('h2', {}, node ? `${params.get('direction') === 'down' ? 'Down' : 'Up'} from ${node}` : `${name} of ${twin}`),
    h('p', { class: 'muted small' },
      `${graph.nodes.length} nodes, ${graph.edges.length} edges${graph.truncated ? ' (truncated: raise depth or walk from a node)' : ''} · `,
      h('a', { href: graphml, download: 'lineage.graphml' }, 'GraphML'), ' · select a node for its details'),
    h('div', { class: 'graph-tools' },
      h('label', { class: 'inline' }, fold, folded.collapsed ? ` fold repeated runs (${folded.collapsed} nodes fewer)` : ' no repeated runs to fold'),
      h('span', { class: 'muted small' }, 'drag to pan · Ctrl+wheel or pinch to zoom'),
      h('span', { class: 'zoom' },
        tool('−', 'zoom out', (v) => v.zoom(0.8)),
        tool('+', 'zoom in', (v) => v.zoom(1.25)),
        tool('Reset', 'back to the first view, centred on the traced node', (v) => v.reset()))),
    holder,
    details,
  );
  const select = (n) => {
    for (const g of holder.querySelectorAll('g.node')) g.classList.toggle('selected', g.dataset.id === n.id);
    replace(details, n.count ? groupDetails(n) : nodeDetails(n));
  };
  const draw = () => {
    const width = holder.clientWidth || window.innerWidth;
    const shown = fold.checked ? folded : graph;
    const svg = drawLineage(shown, { width, vertical: width < NARROW_PX, onSelect: select });
    svg.dataset.vertical = String(width < NARROW_PX);
    replace(holder, svg);
    view = panZoom(svg, { width, focus: graph.root });
    const selected = details.firstChild?.dataset.id;
    if (selected && svg.querySelector(`g.node[data-id="${CSS.escape(selected)}"]`)) select(shown.nodes.find((n) => n.id === selected));
  };
  draw();
  const rootNode = graph.nodes.find((n) => n.id === (graph.run || graph.root));
  if (rootNode) select(rootNode);
  let drawnWidth = holder.clientWidth;
  const observer = new ResizeObserver(() => {
    if (Math.abs(holder.clientWidth - drawnWidth) < 2) return;
    drawnWidth = holder.clientWidth;
    draw();
  });
  observer.observe(holder);
  signal.addEventListener('abort', () => observer.disconnect());
}

/** A folded node: how many, over what time, and each member to walk from. */
function groupDetails(g) {
  return h(
    'div',
    { 'data-id': g.id },
    h('h3', {}, `${counted(g)}: ${g.name}`),
    g.first && h('p', { class: 'small' }, `${localTime(g.first)} → ${localTime(g.last)}`),
    h('p', { class: 'small muted' }, 'Repeated nodes of one job, folded into one; untick "fold repeated runs" to draw each.'),
    h('ul', { class: 'members small' }, g.members.map((m) =>
      h('li', {}, h('a', { href: `#/lineage?${qs({ node: m.id, direction: 'up' })}` }, m.id), m.started || m.created ? ` · ${when(m.started || m.created)}` : ''))),
  );
}

/** The timestamp of the newest value of `name` among the twin's recent events (for a blank ts). */
async function newestPublished(twin, name, signal) {
  const events = await api(twinPath(twin, '/observations'), { query: { limit: EVENT_SCAN }, signal });
  const hit = events.find((e) => e.values && e.values[name] !== undefined && e.values[name] !== null);
  if (!hit) {
    throw Object.assign(new Error(`no value of '${name}' among the ${EVENT_SCAN} newest events of '${twin}'`), {
      field: 'ts',
      fix: 'give the value\'s time (ISO 8601 or epoch ms), e.g. from the twin\'s chart or events',
    });
  }
  return String(hit.ts);
}

/** A node's record: kind, times, host, code hash, inputs and outputs, and where to go next. */
function nodeDetails(n) {
  const model = n.kind === 'model' && /^model:([^/@]+)\/(\d+)$/.exec(n.id);
  const walk = (direction, label) => h('a', { href: `#/lineage?${qs({ node: n.id, direction })}` }, label);
  const json = (value) => h('pre', { class: 'json' }, JSON.stringify(value, null, 2));
  return h(
    'div',
    { 'data-id': n.id },
    h('h3', {}, `${n.kind}: ${n.name || n.id}`),
    h('p', { class: 'small' }, h('code', {}, n.id)),
    h('p', { class: 'small' },
      [
        n.started && `started ${when(n.started)}`,
        n.finished && `finished ${when(n.finished)}`,
        !n.started && n.created && `recorded ${when(n.created)}`,
        n.host && `host ${n.host}`,
        n.ts && `value time ${localTime(Date.parse(n.ts), true)}`,
      ].filter(Boolean).join(' · '),
      n.code_hash && [' · code ', h('code', { title: n.code_hash }, n.code_hash.slice(0, 16))]),
    h('p', { class: 'small' },
      n.kind !== 'value' && [walk('up', 'walk up from here'), ' · ', walk('down', 'walk down from here')],
      model && [' · ', h('a', { href: `#/models/${encodeURIComponent(model[1])}` }, `model ${model[1]} v${model[2]}`)],
      n.twin && [' · ', link('#/twin/', n.twin, `twin ${n.twin}`)]),
    n.inputs && Object.keys(n.inputs).length > 0 && h('details', { open: true }, h('summary', {}, 'inputs'), json(n.inputs)),
    n.outputs && Object.keys(n.outputs).length > 0 && h('details', {}, h('summary', {}, 'outputs'), json(n.outputs)),
  );
}
