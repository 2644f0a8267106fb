// Live loss chart on "Train Textual Localization (K/V)" (TL_TrainKV).
//
// The trainer sends "textloc.train.step" {step, total, denoise, prior, attention, node, max,
// eta_seconds, run} after every step. The node of that id draws the four losses in a small
// canvas widget. A page reloaded during a run asks the server for the steps it missed
// (GET /textual_localization/train_history?node=<id>). The attention preview and the progress
// bar are ComfyUI's own (progress previews, then the node's output image).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_TYPE = "TL_TrainKV";
const STEP_EVENT = "textloc.train.step";
const HISTORY_URL = "/textual_localization/train_history";
const MAX_POINTS = 4000;
const CHART_HEIGHT = 150;
const SERIES = [
  { key: "total", label: "total", color: null }, // null: the theme's text colour
  { key: "denoise", label: "denoise", color: "#4d9de0" },
  { key: "prior", label: "prior", color: "#7cb342" },
  { key: "attention", label: "attention", color: "#f08a24" },
];

function themeColor(name, fallback) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

function formatLoss(value) {
  if (value === undefined || value === null || !Number.isFinite(value)) return "-";
  if (value === 0) return "0";
  return Math.abs(value) >= 0.01 ? value.toFixed(3) : value.toExponential(1);
}

function formatSeconds(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}

class LossChart {
  constructor() {
    this.steps = [];
    this.run = null;
    this.max = null;
    this.eta = null;

    this.element = document.createElement("div");
    this.element.className = "textloc-loss-chart";
    this.element.style.display = "flex";
    this.element.style.flexDirection = "column";
    this.element.style.gap = "2px";
    this.element.style.fontSize = "11px";
    this.element.style.color = "var(--descrip-text, #999)";

    this.caption = document.createElement("div");
    this.caption.className = "textloc-loss-caption";
    this.canvas = document.createElement("canvas");
    this.canvas.style.flex = "1 1 auto";
    this.canvas.style.minHeight = "60px";
    this.canvas.style.width = "100%";
    this.legend = document.createElement("div");
    this.legend.className = "textloc-loss-legend";
    this.legend.style.display = "flex";
    this.legend.style.flexWrap = "wrap";
    this.legend.style.gap = "2px 10px";
    this.values = {};
    for (const series of SERIES) {
      const item = document.createElement("span");
      const swatch = document.createElement("span");
      swatch.style.display = "inline-block";
      swatch.style.width = "10px";
      swatch.style.height = "3px";
      swatch.style.marginRight = "4px";
      swatch.style.verticalAlign = "middle";
      swatch.style.background = series.color ?? "var(--fg-color, #ddd)";
      const value = document.createElement("span");
      item.append(swatch, `${series.label} `, value);
      this.values[series.key] = value;
      this.legend.append(item);
    }
    this.element.append(this.caption, this.canvas, this.legend);
    this.updateText();

    this.pending = false;
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(this.canvas);
  }

  dispose() {
    this.resizeObserver.disconnect();
  }

  reset(run) {
    this.steps = [];
    this.run = run ?? null;
    this.max = null;
    this.eta = null;
  }

  add(detail) {
    const last = this.steps.at(-1);
    if (detail.run !== this.run || (last && detail.step <= last.step)) this.reset(detail.run);
    this.steps.push({
      step: detail.step,
      total: detail.total,
      denoise: detail.denoise,
      prior: detail.prior,
      attention: detail.attention,
    });
    if (this.steps.length > MAX_POINTS) {
      this.steps = this.steps.filter((_, i) => i % 2 === 0 || i === this.steps.length - 1);
    }
    this.max = detail.max ?? this.max;
    this.eta = detail.eta_seconds ?? this.eta;
    this.changed();
  }

  // Steps from the server (a reload mid-run): keep live steps that are newer.
  setHistory(entry) {
    if (!entry || !entry.steps || entry.steps.length === 0) return;
    const last = entry.steps.at(-1).step;
    const newer = entry.run === this.run ? this.steps.filter((s) => s.step > last) : [];
    this.run = entry.run;
    this.steps = [...entry.steps, ...newer];
    this.max = entry.max ?? this.max;
    if (newer.length === 0) this.eta = entry.eta_seconds ?? this.eta;
    this.changed();
  }

  changed() {
    this.updateText();
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  updateText() {
    const last = this.steps.at(-1);
    if (!last) {
      this.caption.textContent = "Loss per step (shown while training)";
    } else {
      const eta = this.max && last.step < this.max ? formatSeconds(this.eta) : "";
      const parts = [this.run, `step ${last.step}${this.max ? ` / ${this.max}` : ""}`, eta && `${eta} left`];
      this.caption.textContent = parts.filter(Boolean).join(" · ");
    }
    for (const series of SERIES) this.values[series.key].textContent = formatLoss(last?.[series.key]);
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    const border = themeColor("--border-color", "#555");
    ctx.strokeStyle = border;
    ctx.lineWidth = ratio;
    ctx.strokeRect(0.5 * ratio, 0.5 * ratio, width - ratio, height - ratio);
    if (this.steps.length === 0) return;

    // Log scale: the attention loss is often 10-100x smaller than the denoising loss.
    let low = Infinity;
    let high = 0;
    for (const s of this.steps) {
      for (const series of SERIES) {
        const v = s[series.key];
        if (Number.isFinite(v) && v > 0) {
          low = Math.min(low, v);
          high = Math.max(high, v);
        }
      }
    }
    if (!(high > 0)) return;
    low = Math.min(low, high / 10); // at least one decade
    const logLow = Math.log10(low);
    const logRange = Math.log10(high) - logLow;
    const first = this.steps[0].step;
    const lastStep = Math.max(this.max ?? 0, this.steps.at(-1).step, first + 1);
    const pad = 4 * ratio;
    const x = (step) => pad + ((step - first) / Math.max(1, lastStep - first)) * (width - 2 * pad);
    const y = (v) => height - pad - ((Math.log10(v) - logLow) / logRange) * (height - 2 * pad);

    ctx.fillStyle = themeColor("--descrip-text", "#999");
    ctx.font = `${10 * ratio}px sans-serif`;
    ctx.textAlign = "right";
    ctx.textBaseline = "top";
    ctx.fillText(formatLoss(high), width - pad, pad);
    ctx.textBaseline = "bottom";
    ctx.fillText(`${formatLoss(low)} (log)`, width - pad, height - pad);

    const fg = themeColor("--fg-color", "#ddd");
    for (const series of SERIES) {
      ctx.strokeStyle = series.color ?? fg;
      ctx.lineWidth = (series.key === "total" ? 2 : 1.5) * ratio;
      ctx.beginPath();
      let drawing = false;
      for (const s of this.steps) {
        const v = s[series.key];
        if (!Number.isFinite(v) || v <= 0) {
          drawing = false; // a gap: zero (e.g. no prior images) or not a number
          continue;
        }
        if (drawing) ctx.lineTo(x(s.step), y(v));
        else ctx.moveTo(x(s.step), y(v));
        if (!drawing && this.steps.length === 1) ctx.lineTo(x(s.step) + 3 * ratio, y(v));
        drawing = true;
      }
      ctx.stroke();
    }
  }
}

function addChart(node) {
  if (node.textlocChart) return node.textlocChart;
  const chart = new LossChart();
  const widget = node.addDOMWidget("loss_chart", "textloc_loss_chart", chart.element, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => CHART_HEIGHT,
    getMaxHeight: () => CHART_HEIGHT,
  });
  widget.serialize = false; // not part of the saved workflow's widgets_values
  node.textlocChart = chart;
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    chart.dispose();
    return onRemoved?.apply(this, arguments);
  };
  return chart;
}

// The run of `entry` belongs to this node when its name is the node's output_name (or a fresh
// output_name_2, _3 ... the trainer picked): another workflow may have a node with the same id.
function isNodesRun(node, entry) {
  const name = String(node.widgets?.find((w) => w.name === "output_name")?.value ?? "").trim();
  return !name || !entry.run || entry.run === name || entry.run.startsWith(`${name}_`);
}

async function loadHistory(node) {
  try {
    const response = await api.fetchApi(`${HISTORY_URL}?node=${encodeURIComponent(String(node.id))}`);
    if (!response.ok) return;
    const entry = await response.json();
    if (isNodesRun(node, entry)) node.textlocChart?.setHistory(entry);
  } catch (error) {
    console.warn("Textual Localization: could not load the training history", error);
  }
}

app.registerExtension({
  name: "textual_localization.training",

  async setup() {
    api.addEventListener(STEP_EVENT, ({ detail }) => {
      if (!detail || detail.node === undefined || detail.node === null) return;
      const node = app.graph?.getNodeById(detail.node);
      if (!node || node.type !== NODE_TYPE) return;
      addChart(node).add(detail);
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      addChart(this);
      return result;
    };
  },

  // A node restored from a saved or reloaded workflow: fetch the steps it may have missed.
  loadedGraphNode(node) {
    if (node.type === NODE_TYPE) loadHistory(node);
  },
});
