//! The local world driver.
