//! A contact sheet of one augmented training batch, for people: what the
//! network is shown, next to where it came from.
//!
//! Each cell: the stored 256x256 image with the crop window outlined (green,
//! or magenta when the crop is mirrored), and beside it the crop as the loader
//! hands it over (mirror applied) with its PCA lighting offset added. The
//! mean is not subtracted, so the crop stays viewable.

use std::sync::Arc;

use image::{Rgb, RgbImage};

use crate::format::shard::RecordDecoder;
use crate::loader::augment::{Mode, View};
use crate::loader::{BatchData, Dataset, Loader, LoaderConfig, LoaderError, Output};

const GAP: u32 = 4;
const MARGIN: u32 = 8;
const PLAIN: Rgb<u8> = Rgb([40, 220, 60]);
const MIRRORED: Rgb<u8> = Rgb([230, 40, 230]);

/// What the sheet shows, per image.
#[derive(Debug, Clone)]
pub struct SheetEntry {
    pub label: u32,
    pub view: View,
}

/// Draws the first batch of `epoch` as the loader makes it with `config`
/// (train mode, uint8), `columns` cells a row.
pub fn contact_sheet(
    dataset: Arc<Dataset>,
    config: &LoaderConfig,
    epoch: u64,
    columns: usize,
) -> Result<(RgbImage, Vec<SheetEntry>), LoaderError> {
    let config = LoaderConfig {
        mode: Mode::Train,
        output: Output::U8,
        ..config.clone()
    };
    let mut loader = Loader::new(dataset.clone(), config.clone(), epoch, 0)?;
    let batch = loader
        .next()
        .ok_or_else(|| LoaderError::Config("the train split has no batch".into()))??;
    let BatchData::U8(pixels) = &batch.data else {
        return Err(LoaderError::Config("expected uint8 crops".into()));
    };
    let (side, crop) = (dataset.side(), config.crop);
    let columns = columns.max(1);
    let rows = batch.records.len().div_ceil(columns);
    let cell_w = (side + crop) as u32 + GAP;
    let width = columns as u32 * cell_w + (columns as u32 + 1) * MARGIN;
    let height = rows as u32 * side as u32 + (rows as u32 + 1) * MARGIN;
    let mut sheet = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut decoder =
        RecordDecoder::new().map_err(|e| LoaderError::Worker(format!("zstd: {e}")))?;
    let mut stored = vec![0u8; side * side * 3];
    let mut entries = Vec::new();
    for (i, (&id, view)) in batch.records.iter().zip(&batch.views).enumerate() {
        dataset.decode(id, &mut decoder, &mut stored)?;
        let x0 = MARGIN + (i % columns) as u32 * (cell_w + MARGIN);
        let y0 = MARGIN + (i / columns) as u32 * (side as u32 + MARGIN);
        blit(&mut sheet, x0, y0, &stored, side, |p| p);
        outline(
            &mut sheet,
            x0 + view.x as u32,
            y0 + view.y as u32,
            crop as u32,
            view,
        );
        let crop_px = &pixels[i * crop * crop * 3..][..crop * crop * 3];
        blit(&mut sheet, x0 + side as u32 + GAP, y0, crop_px, crop, |p| {
            lit(p, view)
        });
        entries.push(SheetEntry {
            label: batch.labels[i],
            view: *view,
        });
    }
    Ok((sheet, entries))
}

/// A pixel with the view's lighting offset, rounded and clamped.
fn lit(p: [u8; 3], view: &View) -> [u8; 3] {
    std::array::from_fn(|c| (p[c] as f32 + view.light[c]).round().clamp(0.0, 255.0) as u8)
}

fn blit(
    sheet: &mut RgbImage,
    x0: u32,
    y0: u32,
    src: &[u8],
    side: usize,
    f: impl Fn([u8; 3]) -> [u8; 3],
) {
    for (k, px) in src.chunks_exact(3).enumerate() {
        let (x, y) = ((k % side) as u32, (k / side) as u32);
        sheet.put_pixel(x0 + x, y0 + y, Rgb(f([px[0], px[1], px[2]])));
    }
}

/// A 2-pixel frame just inside the crop window.
fn outline(sheet: &mut RgbImage, x0: u32, y0: u32, size: u32, view: &View) {
    let colour = if view.flip { MIRRORED } else { PLAIN };
    for t in 0..size {
        for w in 0..2 {
            sheet.put_pixel(x0 + t, y0 + w, colour);
            sheet.put_pixel(x0 + t, y0 + size - 1 - w, colour);
            sheet.put_pixel(x0 + w, y0 + t, colour);
            sheet.put_pixel(x0 + size - 1 - w, y0 + t, colour);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::augment;
    use crate::loader::tests::{dataset, CROP, SIDE};

    /// Every cell holds the stored image and, beside it, the loader's crop
    /// with its lighting: checked against crop_u8 of the decoded image.
    #[test]
    fn cells_show_the_stored_image_and_its_augmented_crop() {
        let (_dir, data) = dataset();
        let config = LoaderConfig {
            batch_size: 6,
            threads: 2,
            crop: CROP,
            seed: 4,
            ..LoaderConfig::default()
        };
        let (sheet, entries) = contact_sheet(data.clone(), &config, 0, 4).unwrap();
        let cell_w = (SIDE + CROP) as u32 + GAP;
        assert_eq!(sheet.width(), 4 * cell_w + 5 * MARGIN);
        assert_eq!(sheet.height(), 2 * SIDE as u32 + 3 * MARGIN);
        assert_eq!(entries.len(), 6);
        let batch = Loader::new(data.clone(), config.clone(), 0, 0)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let mut decoder = RecordDecoder::new().unwrap();
        let mut stored = vec![0u8; SIDE * SIDE * 3];
        let mut crop = vec![0u8; CROP * CROP * 3];
        let mut lit_any = false;
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(entry.view, batch.views[i]);
            data.decode(batch.records[i], &mut decoder, &mut stored)
                .unwrap();
            augment::crop_u8(&stored, SIDE, &entry.view, CROP, &mut crop);
            let x0 = MARGIN + (i % 4) as u32 * (cell_w + MARGIN);
            let y0 = MARGIN + (i / 4) as u32 * (SIDE as u32 + MARGIN);
            // A stored pixel away from the outline, and every crop pixel.
            let (sx, sy) = if entry.view.x > 3 {
                (0, 0)
            } else {
                (SIDE as u32 - 1, SIDE as u32 - 1)
            };
            let k = (sy as usize * SIDE + sx as usize) * 3;
            assert_eq!(
                sheet.get_pixel(x0 + sx, y0 + sy).0,
                [stored[k], stored[k + 1], stored[k + 2]]
            );
            for (j, px) in crop.chunks_exact(3).enumerate() {
                let (x, y) = ((j % CROP) as u32, (j / CROP) as u32);
                let want = lit([px[0], px[1], px[2]], &entry.view);
                let got = sheet.get_pixel(x0 + SIDE as u32 + GAP + x, y0 + y).0;
                assert_eq!(got, want, "cell {i} ({x}, {y})");
                lit_any |= want != [px[0], px[1], px[2]];
            }
            let colour = if entry.view.flip { MIRRORED } else { PLAIN };
            assert_eq!(
                *sheet.get_pixel(x0 + entry.view.x as u32, y0 + entry.view.y as u32),
                colour
            );
        }
        assert!(lit_any, "lighting changed no pixel");
    }
}
