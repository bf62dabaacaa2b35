// A lineage graph as a layered SVG (no library): inputs on the left (or on top at phone width),
// what they fed to the right (or below); one box per node, coloured by kind.
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

const short = (iso) => (iso ? localTime(Date.parse(iso)) : '');
const fit = (text, chars) => (text.length > chars ? `${text.slice(0, chars - 1)}…` : text);

/** The second line of a node's box: what tells it apart at a glance. */
export function caption(node) {
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
        class: n.id === graph.root ? 'node root' : 'node',
        'data-id': n.id,
        'data-kind': n.kind,
        transform: `translate(${x} ${y})`,
        tabindex: '0',
        role: 'button',
      },
      s('title', {}, n.id),
      s('rect', { width: nodeW, height: NODE_H, rx: '8', class: `kind-${n.kind}` }),
      s('text', { x: '8', y: '16', class: 'kind' }, n.kind),
      s('text', { x: '8', y: '34', class: 'name' }, fit(n.name || n.id, chars)),
      s('text', { x: '8', y: '50', class: 'caption' }, fit(caption(n), chars + 4)),
    );
    g.addEventListener('click', () => onSelect(n));
    g.addEventListener('keydown', (e) => e.key === 'Enter' && onSelect(n));
    svg.append(g);
  }
  return svg;
}
