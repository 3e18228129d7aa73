//! JPEGs decoded by libjpeg-turbo, the decoder inside Pillow (the `libjpeg-turbo` feature):
//! only the rows and block columns that a crop needs (`jpeg_skip_scanlines`,
//! `jpeg_crop_scanline`), with exactly the pixels that the whole image's decode has there.
//! The C side (`libjpeg.c`) turns libjpeg's fatal errors into messages.

use std::ffi::{c_char, c_int, CStr};
use std::fmt::Display;
use std::marker::PhantomData;

use image::RgbImage;

use super::Region;

/// libjpeg's messages fit (`MESSAGE_LENGTH` in `libjpeg.c`).
const MESSAGE_LENGTH: usize = 256;

#[repr(C)]
struct Decoder {
    _opaque: [u8; 0],
}

extern "C" {
    fn pedconv_jpeg_open(bytes: *const u8, length: usize, message: *mut c_char) -> *mut Decoder;
    fn pedconv_jpeg_describe(
        jpeg: *const Decoder,
        width: *mut u32,
        height: *mut u32,
        converts_to_rgb: *mut c_int,
    );
    #[allow(clippy::too_many_arguments)]
    fn pedconv_jpeg_decode_region(
        jpeg: *mut Decoder,
        left: u32,
        width: u32,
        top: u32,
        height: u32,
        pixels: *mut u8,
        capacity: usize,
        first_column: *mut u32,
        columns: *mut u32,
        message: *mut c_char,
    ) -> c_int;
    fn pedconv_jpeg_close(jpeg: *mut Decoder);
}

/// A JPEG whose headers are read, its pixels not yet decoded; borrows the encoded bytes.
pub struct Jpeg<'a> {
    decoder: *mut Decoder,
    width: u32,
    height: u32,
    converts_to_rgb: bool,
    bytes: PhantomData<&'a [u8]>,
}

/// The error in `message`, or libjpeg's lack of memory where it is empty.
fn error(name: &dyn Display, message: &[c_char; MESSAGE_LENGTH]) -> String {
    let text = CStr::from_bytes_until_nul(message_bytes(message))
        .map(|text| text.to_string_lossy().into_owned())
        .unwrap_or_default();
    if text.is_empty() {
        format!("{name}: out of memory in libjpeg")
    } else {
        format!("{name}: {text}")
    }
}

fn message_bytes(message: &[c_char; MESSAGE_LENGTH]) -> &[u8] {
    // SAFETY: `c_char` is `i8` or `u8`, of one byte either way.
    unsafe { std::slice::from_raw_parts(message.as_ptr().cast(), MESSAGE_LENGTH) }
}

impl<'a> Jpeg<'a> {
    /// Reads the headers of `bytes` (a JPEG); errors name `name`.
    pub fn open(bytes: &'a [u8], name: &dyn Display) -> Result<Self, String> {
        let mut message = [0 as c_char; MESSAGE_LENGTH];
        // SAFETY: `bytes` outlives the decoder (the lifetime `'a`); `message` holds
        // MESSAGE_LENGTH bytes, as the C side expects.
        let decoder =
            unsafe { pedconv_jpeg_open(bytes.as_ptr(), bytes.len(), message.as_mut_ptr()) };
        if decoder.is_null() {
            return Err(error(name, &message));
        }
        let (mut width, mut height, mut converts_to_rgb) = (0, 0, 0);
        // SAFETY: a decoder that `pedconv_jpeg_open` returned.
        unsafe { pedconv_jpeg_describe(decoder, &mut width, &mut height, &mut converts_to_rgb) };
        Ok(Self {
            decoder,
            width,
            height,
            converts_to_rgb: converts_to_rgb != 0,
            bytes: PhantomData,
        })
    }

    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Whether libjpeg decodes it to RGB (luma and YCbCr JPEGs do; CMYK and YCCK ones do not).
    pub fn converts_to_rgb(&self) -> bool {
        self.converts_to_rgb
    }

    /// Decodes the region `(left, top, width, height)` (inside the image, of a JPEG that
    /// [`Self::converts_to_rgb`]): an image of the region's rows and of whole blocks' columns
    /// around it, and the region's left edge in that image.
    pub fn decode_region(
        self,
        region: Region,
        name: &dyn Display,
    ) -> Result<(RgbImage, u32), String> {
        let (left, top, width, height) = region;
        assert!(
            left + width <= self.width && top + height <= self.height && self.converts_to_rgb,
            "a region of {width}×{height} at ({left}, {top}) to decode from a {}×{} JPEG",
            self.width,
            self.height
        );
        // The C side widens the columns by less than a block row (32 pixels) on the left and
        // by a chroma sample (4 pixels at most) on either side.
        let mut pixels = vec![0u8; (width as usize + 40) * height as usize * 3];
        let (mut first_column, mut columns) = (0, 0);
        let mut message = [0 as c_char; MESSAGE_LENGTH];
        // SAFETY: an open decoder, used once; `pixels` holds `capacity` bytes and `message`
        // MESSAGE_LENGTH, as the C side expects.
        let status = unsafe {
            pedconv_jpeg_decode_region(
                self.decoder,
                left,
                width,
                top,
                height,
                pixels.as_mut_ptr(),
                pixels.len(),
                &mut first_column,
                &mut columns,
                message.as_mut_ptr(),
            )
        };
        if status != 0 {
            return Err(error(name, &message));
        }
        pixels.truncate(columns as usize * height as usize * 3);
        let image = RgbImage::from_raw(columns, height, pixels).expect("the rows decoded");
        Ok((image, left - first_column))
    }
}

impl Drop for Jpeg<'_> {
    fn drop(&mut self) {
        // SAFETY: a decoder that `pedconv_jpeg_open` returned, closed once.
        unsafe { pedconv_jpeg_close(self.decoder) }
    }
}
