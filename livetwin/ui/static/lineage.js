// A lineage graph as a layered SVG (no library): inputs on the left (or on top at phone width),
// what they fed to the right (or below); one box per node, coloured by kind. Repeated runs of
// one job collapse into one node with a count; the view zooms and pans around the traced node.
import { localTime } from './dom.js';

const SVG = 'http://www.w3.org/2000/svg';
const NODE_H = 58;
const GAP_MAIN = 56; // between layers
const GAP_CROSS = 14; // between nodes of one layer
const PAD = 8;

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, v);
  el.append(...children.filter((c) => c !== null && c !== undefined));
  return el;
}

/** Each node's layer: after all its inputs, and right before the first node it feeds. */
export function layers(graph) {
  const inputs = new Map(graph.nodes.map((n) => [n.id, []]));
  for (const e of graph.edges) if (inputs.has(e.from) && inputs.has(e.to)) inputs.get(e.to).push(e.from);
  const layer = new Map();
  const visiting = new Set();
  const depth = (id) => {
    if (layer.has(id)) return layer.get(id);
    if (visiting.has(id)) return 0; // a cycle (should not happen): cut it here
    visiting.add(id);
    const d = Math.max(-1, ...inputs.get(id).map(depth)) + 1;
    visiting.delete(id);
    layer.set(id, d);
    return d;
  };
  graph.nodes.forEach((n) => depth(n.id));
  // then pull each node right, next to the first node it feeds (short edges, none behind boxes)
  const feeds = new Map(graph.nodes.map((n) => [n.id, []]));
  for (const [to, froms] of inputs) for (const from of froms) feeds.get(from).push(to);
  for (const id of [...layer.keys()].sort((a, b) => layer.get(b) - layer.get(a))) {
    const next = feeds.get(id).map((to) => layer.get(to));
    if (next.length) layer.set(id, Math.min(...next) - 1);
  }
  return { layer, inputs };
}

/**
 * `graph` with repeated nodes folded: runs of one job (kind and name), except those in `keep`,
 * become one node `{kind: 'run', name, count, members}` when there are two or more; then the
 * data windows that fed only folded nodes fold the same way. Edges follow their ends, once.
 */
export function collapse(graph, keep = new Set([graph.root, graph.run])) {
  const groupOf = new Map(); // node id -> group id
  const consumers = new Map(graph.nodes.map((n) => [n.id, []]));
  for (const e of graph.edges) consumers.get(e.from)?.push(e.to);
  const fold = (candidates) => {
    const byKey = new Map();
    for (const n of candidates) byKey.set(`${n.kind}:${n.name}`, [...(byKey.get(`${n.kind}:${n.name}`) || []), n]);
    for (const [key, members] of byKey) if (members.length > 1) for (const n of members) groupOf.set(n.id, `group:${key}`);
  };
  const free = graph.nodes.filter((n) => !keep.has(n.id));
  fold(free.filter((n) => n.kind === 'run'));
  fold(free.filter((n) => n.kind !== 'run' && n.kind !== 'model' && !groupOf.has(n.id)
    && consumers.get(n.id).length > 0 && consumers.get(n.id).every((to) => groupOf.has(to))));
  if (!groupOf.size) return graph;

  const groups = new Map();
  const nodes = [];
  for (const n of graph.nodes) {
    const gid = groupOf.get(n.id);
    if (!gid) {
      nodes.push(n);
      continue;
    }
    let g = groups.get(gid);
    if (!g) {
      g = { id: gid, kind: n.kind, name: n.name, count: 0, members: [] };
      groups.set(gid, g);
      nodes.push(g);
    }
    g.count += 1;
    g.members.push(n);
  }
  for (const g of groups.values()) {
    const times = g.members.map((m) => Date.parse(m.started || m.created)).filter(Number.isFinite);
    if (times.length) [g.first, g.last] = [Math.min(...times), Math.max(...times)];
  }
  const seen = new Set();
  const edges = [];
  for (const e of graph.edges) {
    const from = groupOf.get(e.from) || e.from;
    const to = groupOf.get(e.to) || e.to;
    if (from === to || seen.has(`${from}\n${to}`)) continue;
    seen.add(`${from}\n${to}`);
    edges.push({ from, to });
  }
  return { ...graph, nodes, edges, collapsed: graph.nodes.length - nodes.length };
}

/** '10 runs', '9 data windows': a folded node's count and kind. */
export const counted = (n) => `${n.count} ${n.kind === 'data' ? 'data windows' : `${n.kind}s`}`;

const short = (t) => (t ? localTime(typeof t === 'number' ? t : Date.parse(t)) : '');
const fit = (text, chars) => (text.length > chars ? `${text.slice(0, chars - 1)}…` : text);

/** The second line of a node's box: what tells it apart at a glance. */
export function caption(node) {
  if (node.count) return node.first ? `${short(node.first)} → ${short(node.last).slice(11)}` : '';
  const inputs = node.inputs || {};
  switch (node.kind) {
    case 'model':
      return inputs.version ? `version ${inputs.version} · ${inputs.kind || ''}` : node.code_hash ? `code ${node.code_hash.slice(0, 12)}` : '';
    case 'data':
      if (inputs.from) return `${short(inputs.from)} → ${short(inputs.to).slice(11)}`;
      if (inputs.window) return `${localTime(inputs.window.start).slice(0, 10)} → ${localTime(inputs.window.end).slice(0, 10)}`;
      return '';
    case 'value':
      return `${node.twin} @ ${short(node.ts)}`;
    default:
      return node.finished ? `finished ${short(node.finished)}` : short(node.created);
  }
}

/**
 * The SVG of `graph` ({root, nodes, edges}) for a box `width` pixels wide; `vertical` stacks the
 * layers top to bottom. `onSelect(node)` hears clicks (and Enter) on a node.
 */
export function drawLineage(graph, { width, vertical = false, onSelect = () => {} }) {
  const { layer } = layers(graph);
  const byLayer = [];
  for (const n of graph.nodes) (byLayer[layer.get(n.id)] ??= []).push(n);
  // order each layer by the mean position of its inputs (fewer crossings), keeping API order on ties
  const position = new Map();
  const edgesTo = new Map();
  for (const e of graph.edges) edgesTo.set(e.to, [...(edgesTo.get(e.to) || []), e.from]);
  byLayer.forEach((nodes) => {
    const mean = (n) => {
      const ps = (edgesTo.get(n.id) || []).filter((p) => position.has(p)).map((p) => position.get(p));
      return ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : Infinity;
    };
    nodes.sort((a, b) => mean(a) - mean(b));
    nodes.forEach((n, i) => position.set(n.id, i));
  });

  const widest = Math.max(...byLayer.map((l) => l.length));
  const nodeW = vertical
    ? Math.max(120, Math.min(200, (width - 2 * PAD - (widest - 1) * GAP_CROSS) / widest))
    : 200;
  const mainStep = (vertical ? NODE_H : nodeW) + GAP_MAIN;
  const crossStep = (vertical ? nodeW : NODE_H) + GAP_CROSS;
  const crossSpan = widest * crossStep - GAP_CROSS;
  const box = new Map();
  byLayer.forEach((nodes, k) => {
    const offset = (crossSpan - (nodes.length * crossStep - GAP_CROSS)) / 2;
    nodes.forEach((n, i) => {
      const main = PAD + k * mainStep;
      const cross = PAD + offset + i * crossStep;
      box.set(n.id, vertical ? { x: cross, y: main } : { x: main, y: cross });
    });
  });
  const w = vertical ? crossSpan + 2 * PAD : byLayer.length * mainStep - GAP_MAIN + 2 * PAD;
  const h = vertical ? byLayer.length * mainStep - GAP_MAIN + 2 * PAD : crossSpan + 2 * PAD;

  const svg = s('svg', {
    class: 'lineage',
    width: w,
    height: h,
    viewBox: `0 0 ${w} ${h}`,
    'data-width': w,
    'data-height': h,
    role: 'img',
    'aria-label': `lineage graph of ${graph.root}: ${graph.nodes.length} nodes`,
  });
  svg.append(
    s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: '10', refY: '5', markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse' },
      s('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrow' }))),
  );
  for (const e of graph.edges) {
    const a = box.get(e.from);
    const b = box.get(e.to);
    if (!a || !b) continue;
    let d;
    if (vertical) {
      const [x1, y1, x2, y2] = [a.x + nodeW / 2, a.y + NODE_H, b.x + nodeW / 2, b.y];
      const my = (y1 + y2) / 2;
      d = `M ${x1} ${y1} C ${x1} ${my}, ${x2} ${my}, ${x2} ${y2}`;
    } else {
      const [x1, y1, x2, y2] = [a.x + nodeW, a.y + NODE_H / 2, b.x, b.y + NODE_H / 2];
      const mx = (x1 + x2) / 2;
      d = `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`;
    }
    svg.append(s('path', { class: 'edge', d, 'marker-end': 'url(#arrow)', 'data-from': e.from, 'data-to': e.to }));
  }
  const chars = Math.floor((nodeW - 16) / 7);
  for (const n of graph.nodes) {
    const { x, y } = box.get(n.id);
    const g = s(
      'g',
      {
        class: `node${n.id === graph.root ? ' root' : ''}${n.count ? ' group' : ''}`,
        'data-id': n.id,
        'data-kind': n.kind,
        'data-count': n.count,
        transform: `translate(${x} ${y})`,
        'data-cx': x + nodeW / 2,
        'data-cy': y + NODE_H / 2,
        tabindex: '0',
        role: 'button',
      },
      s('title', {}, n.count ? `${n.count} ${n.kind} nodes of ${n.name}` : n.id),
      n.count && s('rect', { x: '4', y: '4', width: nodeW, height: NODE_H, rx: '8', class: `kind-${n.kind} stack` }),
      s('rect', { width: nodeW, height: NODE_H, rx: '8', class: `kind-${n.kind}` }),
      s('text', { x: '8', y: '16', class: 'kind' }, n.count ? counted(n) : n.kind),
      s('text', { x: '8', y: '34', class: 'name' }, fit(n.name || n.id, chars)),
      s('text', { x: '8', y: '50', class: 'caption' }, fit(caption(n), chars + 4)),
    );
    g.addEventListener('click', () => onSelect(n));
    g.addEventListener('keydown', (e) => e.key === 'Enter' && onSelect(n));
    svg.append(g);
  }
  return svg;
}

const MIN_FIT = 0.55; // the smallest scale a first view uses: below it the boxes' text is unreadable
const ZOOM = [0.15, 3]; // how far the user may zoom out and in
const MAX_HEIGHT = 560; // px: a taller graph shows the part around the focus
const clamp = (v, lo, hi) => (lo > hi ? (lo + hi) / 2 : Math.min(hi, Math.max(lo, v)));

/**
 * Show `svg` (from drawLineage) in a box `width` px wide: the whole graph when it fits at a
 * readable scale, else the part centred on node `focus`. Drag pans; Ctrl+wheel (a pinch), the
 * keys + - 0 and arrows, or `zoom(factor)` zoom and pan; `reset()` returns to the first view.
 */
export function panZoom(svg, { width, focus }) {
  const W = Number(svg.dataset.width);
  const H = Number(svg.dataset.height);
  const box = { w: Math.max(width, 1), h: 0 };
  let view = { x: 0, y: 0, k: 1 }; // the box's top-left in graph units; pixels per unit
  const apply = () => {
    svg.setAttribute('viewBox', `${view.x} ${view.y} ${box.w / view.k} ${box.h / view.k}`);
    svg.dataset.scale = view.k.toFixed(3);
  };
  const reset = () => {
    const k = clamp(box.w / W, MIN_FIT, 1);
    box.h = Math.min(H * k, MAX_HEIGHT);
    svg.setAttribute('width', box.w);
    svg.setAttribute('height', box.h);
    const target = focus && svg.querySelector(`g.node[data-id="${CSS.escape(focus)}"]`);
    const [cx, cy] = target ? [Number(target.dataset.cx), Number(target.dataset.cy)] : [W / 2, H / 2];
    const [vw, vh] = [box.w / k, box.h / k];
    // centre the graph where it fits; else the focus, without leaving empty space at an edge
    view = { k, x: vw >= W ? (W - vw) / 2 : clamp(cx - vw / 2, 0, W - vw), y: vh >= H ? (H - vh) / 2 : clamp(cy - vh / 2, 0, H - vh) };
    apply();
  };
  const zoom = (factor, px = box.w / 2, py = box.h / 2) => {
    const k = clamp(view.k * factor, ...ZOOM);
    view = { k, x: view.x + px / view.k - px / k, y: view.y + py / view.k - py / k };
    apply();
  };
  const pan = (dx, dy) => {
    view = { ...view, x: view.x - dx / view.k, y: view.y - dy / view.k };
    apply();
  };

  let drag = null; // {id, x, y, moved}
  svg.addEventListener('pointerdown', (e) => {
    if (e.button === 0) drag = { id: e.pointerId, x: e.clientX, y: e.clientY, moved: false };
  });
  svg.addEventListener('pointermove', (e) => {
    if (!drag || e.pointerId !== drag.id) return;
    const [dx, dy] = [e.clientX - drag.x, e.clientY - drag.y];
    if (!drag.moved && Math.hypot(dx, dy) < 4) return; // a click, so far
    if (!drag.moved) svg.setPointerCapture(e.pointerId);
    drag = { ...drag, x: e.clientX, y: e.clientY, moved: true };
    svg.classList.add('dragging');
    pan(dx, dy);
  });
  const end = () => {
    drag = null;
    svg.classList.remove('dragging');
  };
  svg.addEventListener('pointerup', end);
  svg.addEventListener('pointercancel', end);
  svg.addEventListener('wheel', (e) => {
    if (!e.ctrlKey && !e.metaKey) return; // a plain wheel scrolls the page
    e.preventDefault();
    const r = svg.getBoundingClientRect();
    zoom(Math.exp(-e.deltaY / 300), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  const KEYS = { '+': () => zoom(1.25), '=': () => zoom(1.25), '-': () => zoom(0.8), 0: reset,
    ArrowLeft: () => pan(60, 0), ArrowRight: () => pan(-60, 0), ArrowUp: () => pan(0, 60), ArrowDown: () => pan(0, -60) };
  svg.setAttribute('tabindex', '0');
  svg.addEventListener('keydown', (e) => {
    if (e.target !== svg || !KEYS[e.key]) return;
    e.preventDefault();
    KEYS[e.key]();
  });
  reset();
  return { zoom, reset, pan };
}
