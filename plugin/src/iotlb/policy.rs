//! What the IOTLB switches offer and what they accept at SET_FEATURES.

use crate::virtio::VIRTIO_F_ACCESS_PLATFORM;

/// Whether ring and buffer addresses are IOVAs translated through an IOTLB the frontend fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbMode {
    /// Never translate (bit 33, if offered, is only recorded).
    Off,
    /// Always translate; a session without bit 33 is refused.
    Required,
    /// Translate exactly when bit 33 is negotiated (the spec's reading; trusts the frontend).
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IotlbPolicy {
    pub mode: IotlbMode,
    pub access_platform: bool,
}

impl IotlbPolicy {
    /// Bit 33 is offered for `access-platform` (DMA API only) or any translating mode.
    pub fn offers_access_platform(&self) -> bool {
        self.access_platform || self.mode != IotlbMode::Off
    }

    /// BACKEND_REQ (for MISS messages) is offered only when we may translate: with bit 33 but
    /// without BACKEND_REQ, QEMU refuses the backend at init, a fail-early tripwire against a
    /// vIOMMU setup run with `access-platform` alone.
    pub fn offers_backend_req(&self) -> bool {
        self.mode != IotlbMode::Off
    }

    /// Decides, for the features of a SET_FEATURES, whether the session translates. A build
    /// without translation refuses instead of running untranslated (configuration already
    /// refuses the modes that could get here).
    pub fn translate(&self, features: u64) -> Result<bool, String> {
        let translate = self.decide(features)?;
        if translate && !super::TRANSLATION_BUILT {
            return Err(super::NOT_BUILT.into());
        }
        Ok(translate)
    }

    fn decide(&self, features: u64) -> Result<bool, String> {
        let bit33 = features & VIRTIO_F_ACCESS_PLATFORM != 0;
        match (self.mode, bit33) {
            (IotlbMode::Required, false) => Err(
                "IOTLB translation is required (iotlb=required) but the frontend did not negotiate \
                 VIRTIO_F_ACCESS_PLATFORM; refusing to run untranslated"
                    .into(),
            ),
            (IotlbMode::Required, true) => Ok(true),
            (IotlbMode::Auto, b) => Ok(b),
            (IotlbMode::Off, _) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B33: u64 = VIRTIO_F_ACCESS_PLATFORM;

    #[test]
    fn four_combinations() {
        let off = IotlbPolicy {
            mode: IotlbMode::Off,
            access_platform: false,
        };
        let ap = IotlbPolicy {
            mode: IotlbMode::Off,
            access_platform: true,
        };
        let req = IotlbPolicy {
            mode: IotlbMode::Required,
            access_platform: false,
        };
        let auto = IotlbPolicy {
            mode: IotlbMode::Auto,
            access_platform: false,
        };
        // Offers (T1-T3).
        assert_eq!(
            (off.offers_access_platform(), off.offers_backend_req()),
            (false, false)
        );
        assert_eq!(
            (ap.offers_access_platform(), ap.offers_backend_req()),
            (true, false)
        );
        assert_eq!(
            (req.offers_access_platform(), req.offers_backend_req()),
            (true, true)
        );
        // (A), (B): never translate.
        assert_eq!(off.translate(0), Ok(false));
        assert_eq!(ap.translate(B33), Ok(false));
        // (C): refused, loudly.
        assert!(req.translate(0).unwrap_err().contains("required"));
        // (D), in a build that translates; one that cannot refuses instead of running
        // untranslated.
        let translated = if crate::iotlb::TRANSLATION_BUILT {
            Ok(true)
        } else {
            Err(crate::iotlb::NOT_BUILT.to_string())
        };
        assert_eq!(req.translate(B33), translated);
        assert_eq!(
            (auto.translate(0), auto.translate(B33)),
            (Ok(false), translated)
        );
    }
}
