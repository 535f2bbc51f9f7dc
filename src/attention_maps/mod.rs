//! Cross-attention probability maps of the UNet's text tokens (the attention-map capture of
//! prompt-to-prompt / SuppressEOT's `AttentionStore`): which layers and map size ([`maps`]),
//! aggregation on the device, per-token heatmaps averaged over the steps ([`heatmaps`]) and their
//! drawing over an image ([`overlay`]). Used by plain generation (heatmaps) and by SuppressEOT
//! (masks, ITO losses), both of which sit above this module.

pub mod heatmaps;
pub mod maps;
pub mod overlay;

pub use heatmaps::{HeatmapAccumulator, TokenHeatmaps};
pub use maps::{AttentionMaps, Heads, MapLayers, aggregate_maps, aggregate_maps_heads, capture_maps};
