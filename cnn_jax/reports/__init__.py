"""The read-back side: finished runs restored from their folders
(restored_run), run and sweep reports (report, report_sweep, on the markdown
helpers of markdown; entry.write_report is --mode=report and chooses between
them), figures (visualize, visualize_model, plotting) and heat maps
(heatmaps).

Reads run folders (runs, training's restore helpers); the training loop
only calls visualize for its learning-curve figure."""
