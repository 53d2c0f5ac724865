//! Splitting interleaved RGB bytes into their channels with 16-byte
//! shuffles (`pshufb`, and `vpshufb` within each 16-byte half): 16 pixels
//! are 48 bytes, three loads, and each channel is three shuffles OR-ed
//! together. The RGB moments kernels and the float32 hand-over share it.

/// `GATHER[ch][part]`: the shuffle mask that moves channel `ch` of 16
/// pixels out of the `part`-th 16-byte third of their 48 bytes, into lane
/// `pixel`; lanes whose byte lies in another third are -1 (zeroed).
pub(crate) const GATHER: [[[i8; 16]; 3]; 3] = {
    let mut masks = [[[-1i8; 16]; 3]; 3];
    let mut ch = 0;
    while ch < 3 {
        let mut pixel = 0;
        while pixel < 16 {
            let byte = 3 * pixel + ch;
            masks[ch][byte / 16][pixel] = (byte % 16) as i8;
            pixel += 1;
        }
        ch += 1;
    }
    masks
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Applying the masks as `pshufb` does gives each channel in order.
    #[test]
    fn the_masks_gather_each_channel_of_16_pixels() {
        let bytes: Vec<u8> = (0..48).map(|i| i as u8 + 1).collect();
        for (ch, masks) in GATHER.iter().enumerate() {
            let mut got = [0u8; 16];
            for (part, mask) in masks.iter().enumerate() {
                for (lane, &index) in mask.iter().enumerate() {
                    if index >= 0 {
                        got[lane] |= bytes[16 * part + index as usize];
                    }
                }
            }
            let want: Vec<u8> = (0..16).map(|p| bytes[3 * p + ch]).collect();
            assert_eq!(got.to_vec(), want, "channel {ch}");
        }
    }
}
