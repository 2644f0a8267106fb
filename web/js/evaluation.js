// The scores of "Evaluate TL Images" (TL_EvaluateImages), shown on the node after each run.
//
// The node returns its report as ui.text; like the stock Preview Any node, a read-only text box
// shows it. The box is not saved with the workflow and is not an input of the prompt.
import { app } from "../../../scripts/app.js";
import { ComfyWidgets } from "../../../scripts/widgets.js";

const NODE_TYPE = "TL_EvaluateImages";
const WIDGET_NAME = "scores";

app.registerExtension({
  name: "textual_localization.evaluation",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const widget = ComfyWidgets.STRING(this, WIDGET_NAME, ["STRING", { multiline: true }], app).widget;
      widget.options.read_only = true;
      widget.options.serialize = false;
      widget.serialize = false;
      if (widget.element) {
        widget.element.readOnly = true;
        widget.element.placeholder = "The scores appear here after a run.";
      }
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const widget = this.widgets?.find((w) => w.name === WIDGET_NAME);
      if (widget && message?.text) widget.value = message.text.join("\n");
    };
  },
});
