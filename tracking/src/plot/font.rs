//! The font PNG text is drawn with.
//!
//! plotters' bitmap backend rasterises glyphs itself. Its default (`ttf` feature) looks fonts up
//! through fontconfig, which clean CI machines and containers often lack, and a plot without
//! text is useless; so kaizen builds plotters with `ab_glyph` and embeds a subset of DejaVu Sans
//! (`tracking/assets/DejaVuSans-kaizen.ttf`, ~57 KiB: Latin, Greek, arrows, math operators;
//! regenerate with `scripts/make-plot-font.sh`; licence in `tracking/assets/LICENSE-DejaVu`).

use std::sync::OnceLock;

use plotters::style::FontStyle;

/// The font family name every text style in the plots uses.
pub(crate) const FAMILY: &str = "sans-serif";

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-kaizen.ttf");

/// Registers the embedded font with plotters (once per process). Returns false if the embedded
/// file is not a font (a broken build).
pub(crate) fn register() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_font_registers_and_has_the_glyphs_labels_use() {
        assert!(super::register());
        use ab_glyph::Font;
        let font = ab_glyph::FontRef::try_from_slice(super::FONT).unwrap();
        for c in "Δ→·×≤≥αβεμσ–—…0123456789azAZ/()%".chars() {
            assert_ne!(
                font.glyph_id(c).0,
                0,
                "glyph {c:?} missing from the embedded font"
            );
        }
    }
}
