// Workflows saved with the first layout of "Train Textual Localization (K/V)" load with the same
// settings. That layout kept all 20 settings on the node; now the node keeps guidance, steps,
// output_name and resume, and the expert settings live on "TL Training Options". ComfyUI restores
// widgets by position, so an old file would put attention_weight into steps. Before a graph is
// configured, each old-layout training node is split: its four settings stay, the others go to a
// new TL Training Options node linked to its `options` input. headless/workflow_migration.py does
// the same for the headless runner; the browser tests check both give the same prompt.
import { app } from "../../../scripts/app.js";

const TRAIN_NODE = "TL_TrainKV";
const OPTIONS_NODE = "TL_TrainingOptions";
const OPTIONS_TYPE = "TL_TRAIN_OPTIONS";
// Kept equal to textloc/config.py (a unit test compares them).
const TRAIN_NODE_WIDGETS = ["guidance", "steps", "output_name", "resume"];
const TRAINING_OPTIONS_WIDGETS = [
  "attention_weight", "learning_rate", "batch_size", "prior_weight", "seed", "checkpoint_every", "precision",
  "gradient_checkpointing", "train_token", "train_q", "prompt", "concept_phrase", "weight_decay", "grad_clip",
  "preview_every", "attention_size", "lora_rank", "embedding_name", "denoise_region", "prior_empty_prompt",
];
const LEGACY_TRAIN_NODE_WIDGETS = [
  "guidance", "attention_weight", "steps", "learning_rate", "batch_size", "prior_weight", "seed",
  "checkpoint_every", "output_name", "resume", "precision", "gradient_checkpointing", "train_token", "train_q",
  "prompt", "concept_phrase", "weight_decay", "grad_clip", "preview_every", "attention_size",
];
// The options the first layout did not have, at their defaults (textloc/config.py's TrainConfig).
const OPTIONS_NOT_IN_FIRST_LAYOUT = {
  lora_rank: 0, embedding_name: "run/token", denoise_region: "whole photo", prior_empty_prompt: false,
};
const OPTIONS_NODE_SIZE = [340, 560];

// Saved links are arrays [id, origin_id, origin_slot, target_id, target_slot, type] in the 0.4 format
// and objects in later ones.
function linkId(link) { return Array.isArray(link) ? link[0] : link.id; }
function retarget(link, targetId, targetSlot) {
  if (Array.isArray(link)) {
    if (targetId !== null) link[3] = targetId;
    link[4] = targetSlot;
  } else {
    if (targetId !== null) link.target_id = targetId;
    link.target_slot = targetSlot;
  }
}

function isLegacyTrainNode(node) {
  return node?.type === TRAIN_NODE && Array.isArray(node.widgets_values)
    && node.widgets_values.length === LEGACY_TRAIN_NODE_WIDGETS.length;
}

function splitTrainNode(graph, node) {
  const old = Object.fromEntries(LEGACY_TRAIN_NODE_WIDGETS.map((name, i) => [name, node.widgets_values[i]]));
  node.widgets_values = TRAIN_NODE_WIDGETS.map((name) => old[name]);
  // New ids above every id in use and every counter the file keeps (`state` in later formats).
  graph.links ??= [];
  const optionsId = Math.max(Number(graph.last_node_id ?? 0), Number(graph.state?.lastNodeId ?? 0),
    ...graph.nodes.map((n) => Number(n.id))) + 1;
  const newLinkId = Math.max(Number(graph.last_link_id ?? 0), Number(graph.state?.lastLinkId ?? 0),
    ...graph.links.map((l) => Number(linkId(l))), 0) + 1;
  graph.last_node_id = optionsId;
  graph.last_link_id = newLinkId;
  if (graph.state) { // the editor must not hand out these ids again
    graph.state.lastNodeId = optionsId;
    graph.state.lastLinkId = newLinkId;
  }
  // Inputs made for moved widgets: unlinked ones go, linked ones follow their widget.
  const optionsInputs = [];
  const keptInputs = [];
  for (const input of node.inputs ?? []) {
    const widget = input.widget?.name;
    if (TRAINING_OPTIONS_WIDGETS.includes(widget)) {
      if (input.link !== null && input.link !== undefined) optionsInputs.push(input);
      continue;
    }
    keptInputs.push(input);
  }
  keptInputs.push({ name: "options", type: OPTIONS_TYPE, link: newLinkId });
  node.inputs = keptInputs;
  optionsInputs.forEach((input, slot) => {
    for (const link of graph.links) if (linkId(link) === input.link) retarget(link, optionsId, slot);
  });
  keptInputs.forEach((input, slot) => {
    if (input.link === null || input.link === undefined) return;
    for (const link of graph.links) if (linkId(link) === input.link) retarget(link, null, slot);
  });
  const [x, y] = node.pos ?? [0, 0];
  const height = (node.size ?? [0, 0])[1];
  graph.nodes.push({
    id: optionsId, type: OPTIONS_NODE, pos: [x, y + height + 60], size: [...OPTIONS_NODE_SIZE], flags: {},
    order: node.order ?? 0, mode: node.mode ?? 0, inputs: optionsInputs,
    outputs: [{ name: "options", type: OPTIONS_TYPE, links: [newLinkId], slot_index: 0 }],
    properties: { "Node name for S&R": OPTIONS_NODE },
    widgets_values: TRAINING_OPTIONS_WIDGETS.map((name) => (name in old ? old[name] : OPTIONS_NOT_IN_FIRST_LAYOUT[name])),
  });
  const slot = keptInputs.length - 1;
  graph.links.push(graph.links.length && !Array.isArray(graph.links[0])
    ? { id: newLinkId, origin_id: optionsId, origin_slot: 0, target_id: node.id, target_slot: slot, type: OPTIONS_TYPE }
    : [newLinkId, optionsId, 0, node.id, slot, OPTIONS_TYPE]);
}

export function migrateTrainNodes(graph) {
  for (const node of [...(graph?.nodes ?? [])]) if (isLegacyTrainNode(node)) splitTrainNode(graph, node);
  return graph;
}

app.registerExtension({
  name: "textual_localization.train_node_layout",
  async beforeConfigureGraph(graphData) {
    migrateTrainNodes(graphData);
  },
});
