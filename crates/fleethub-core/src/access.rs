//! Shared access policies and the rights they grant (Azure's RegistryRead, RegistryWrite, ServiceConnect,
//! DeviceConnect), and the built-in policies every hub starts with.

use serde::{Deserialize, Serialize};

/// One permission of Azure IoT Hub's access control model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessRight {
    RegistryRead,
    RegistryWrite,
    ServiceConnect,
    DeviceConnect,
}

impl AccessRight {
    pub const ALL: [AccessRight; 4] = [
        Self::RegistryRead,
        Self::RegistryWrite,
        Self::ServiceConnect,
        Self::DeviceConnect,
    ];

    const fn bit(self) -> u8 {
        match self {
            Self::RegistryRead => 1,
            Self::RegistryWrite => 2,
            Self::ServiceConnect => 4,
            Self::DeviceConnect => 8,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::RegistryRead => "RegistryRead",
            Self::RegistryWrite => "RegistryWrite",
            Self::ServiceConnect => "ServiceConnect",
            Self::DeviceConnect => "DeviceConnect",
        }
    }
}

/// A set of rights. RegistryWrite implies RegistryRead, as Azure's "RegistryReadWrite" does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "Vec<String>", try_from = "Vec<String>")]
pub struct AccessRights(u8);

impl AccessRights {
    pub const NONE: Self = Self(0);

    pub const fn of(rights: &[AccessRight]) -> Self {
        let mut bits = 0;
        let mut index = 0;
        while index < rights.len() {
            bits |= rights[index].bit();
            if matches!(rights[index], AccessRight::RegistryWrite) {
                bits |= AccessRight::RegistryRead.bit();
            }
            index += 1;
        }
        Self(bits)
    }

    pub const fn contains(self, right: AccessRight) -> bool {
        self.0 & right.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = AccessRight> {
        AccessRight::ALL
            .into_iter()
            .filter(move |right| self.contains(*right))
    }
}

impl std::fmt::Display for AccessRights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.iter().map(AccessRight::name).collect();
        f.write_str(&names.join(", "))
    }
}

impl From<AccessRights> for Vec<String> {
    fn from(rights: AccessRights) -> Self {
        rights.iter().map(|right| right.name().to_owned()).collect()
    }
}

impl TryFrom<Vec<String>> for AccessRights {
    type Error = String;

    fn try_from(names: Vec<String>) -> Result<Self, Self::Error> {
        let mut rights = Vec::with_capacity(names.len());
        for name in names {
            let right = AccessRight::ALL
                .into_iter()
                .find(|right| right.name().eq_ignore_ascii_case(&name))
                .ok_or_else(|| format!("unknown access right {name:?}"))?;
            rights.push(right);
        }
        Ok(Self::of(&rights))
    }
}

/// A named shared access policy with two keys (base64), either of which signs tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicy {
    pub key_name: String,
    pub primary_key: String,
    pub secondary_key: String,
    pub rights: AccessRights,
}

/// The policies a new hub creates, with Azure's names and rights.
pub const BUILT_IN_POLICIES: [(&str, AccessRights); 5] = [
    (
        "iothubowner",
        AccessRights::of(&[
            AccessRight::RegistryRead,
            AccessRight::RegistryWrite,
            AccessRight::ServiceConnect,
            AccessRight::DeviceConnect,
        ]),
    ),
    ("service", AccessRights::of(&[AccessRight::ServiceConnect])),
    (
        "registryRead",
        AccessRights::of(&[AccessRight::RegistryRead]),
    ),
    (
        "registryReadWrite",
        AccessRights::of(&[AccessRight::RegistryWrite]),
    ),
    ("device", AccessRights::of(&[AccessRight::DeviceConnect])),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_write_implies_read() {
        let rights = AccessRights::of(&[AccessRight::RegistryWrite]);
        assert!(rights.contains(AccessRight::RegistryRead));
        assert!(!rights.contains(AccessRight::ServiceConnect));
    }

    #[test]
    fn rights_serialise_as_names_and_back() {
        let rights = BUILT_IN_POLICIES[0].1;
        let json = serde_json::to_string(&rights).unwrap();
        assert_eq!(
            json,
            r#"["RegistryRead","RegistryWrite","ServiceConnect","DeviceConnect"]"#
        );
        assert_eq!(serde_json::from_str::<AccessRights>(&json).unwrap(), rights);
        assert!(serde_json::from_str::<AccessRights>(r#"["Root"]"#).is_err());
    }
}
