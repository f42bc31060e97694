"""The world map the internet simulator places providers and users on.

Cities with their population (metro, millions), region, UTC offset and the household
electricity price of their country (USD/kWh, rounded 2024 figures of public price
surveys, e.g. GlobalPetrolPrices). Providers and users are drawn from these cities
weighted by population; round trips come from great-circle distance:

    rtt_s = 2 * distance / (200,000 km/s * 0.6 path efficiency) + 5 ms of routing per hop

Vectorised with numpy: the simulator computes every provider's RTT to every gateway at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REGIONS = ("us-east", "us-west", "sa-east", "eu-west", "eu-central", "ap-south", "ap-southeast",
           "ap-northeast")


@dataclass(frozen=True)
class City:
    name: str
    lat: float
    lon: float
    pop_m: float
    region: str
    utc: float  # offset in hours (standard time)
    kwh_usd: float  # household electricity price


CITIES = (
    City("new-york", 40.7, -74.0, 19.5, "us-east", -5, 0.23), City("washington", 38.9, -77.0, 6.3, "us-east", -5, 0.16),
    City("chicago", 41.9, -87.6, 9.4, "us-east", -6, 0.16), City("atlanta", 33.7, -84.4, 6.1, "us-east", -5, 0.14),
    City("toronto", 43.7, -79.4, 6.2, "us-east", -5, 0.10), City("miami", 25.8, -80.2, 6.1, "us-east", -5, 0.15),
    City("los-angeles", 34.1, -118.2, 13.2, "us-west", -8, 0.28), City("san-francisco", 37.8, -122.4, 6.7, "us-west", -8, 0.32),
    City("seattle", 47.6, -122.3, 4.0, "us-west", -8, 0.12), City("dallas", 32.8, -96.8, 7.6, "us-west", -6, 0.15),
    City("mexico-city", 19.4, -99.1, 21.8, "us-west", -6, 0.10), City("sao-paulo", -23.6, -46.6, 22.4, "sa-east", -3, 0.16),
    City("rio", -22.9, -43.2, 13.6, "sa-east", -3, 0.17), City("buenos-aires", -34.6, -58.4, 15.4, "sa-east", -3, 0.05),
    City("bogota", 4.7, -74.1, 11.3, "sa-east", -5, 0.17), City("lima", -12.0, -77.0, 11.0, "sa-east", -5, 0.18),
    City("london", 51.5, -0.1, 9.6, "eu-west", 0, 0.34), City("paris", 48.9, 2.4, 11.1, "eu-west", 1, 0.25),
    City("madrid", 40.4, -3.7, 6.7, "eu-west", 1, 0.25), City("amsterdam", 52.4, 4.9, 2.5, "eu-west", 1, 0.35),
    City("lagos", 6.5, 3.4, 15.4, "eu-west", 1, 0.05), City("berlin", 52.5, 13.4, 3.6, "eu-central", 1, 0.40),
    City("frankfurt", 50.1, 8.7, 2.7, "eu-central", 1, 0.40), City("warsaw", 52.2, 21.0, 3.1, "eu-central", 1, 0.22),
    City("istanbul", 41.0, 29.0, 15.6, "eu-central", 3, 0.10), City("moscow", 55.8, 37.6, 12.6, "eu-central", 3, 0.06),
    City("cairo", 30.0, 31.2, 21.8, "eu-central", 2, 0.03), City("mumbai", 19.1, 72.9, 21.3, "ap-south", 5.5, 0.08),
    City("delhi", 28.6, 77.2, 32.9, "ap-south", 5.5, 0.08), City("bangalore", 13.0, 77.6, 13.6, "ap-south", 5.5, 0.08),
    City("karachi", 24.9, 67.0, 17.2, "ap-south", 5, 0.10), City("dhaka", 23.8, 90.4, 23.2, "ap-south", 6, 0.07),
    City("singapore", 1.35, 103.8, 6.0, "ap-southeast", 8, 0.24), City("jakarta", -6.2, 106.8, 11.2, "ap-southeast", 7, 0.10),
    City("bangkok", 13.8, 100.5, 11.1, "ap-southeast", 7, 0.12), City("manila", 14.6, 121.0, 14.4, "ap-southeast", 8, 0.19),
    City("sydney", -33.9, 151.2, 5.4, "ap-southeast", 10, 0.25), City("ho-chi-minh", 10.8, 106.7, 9.3, "ap-southeast", 7, 0.08),
    City("tokyo", 35.7, 139.7, 37.2, "ap-northeast", 9, 0.21), City("seoul", 37.6, 127.0, 9.9, "ap-northeast", 9, 0.11),
    City("shanghai", 31.2, 121.5, 29.2, "ap-northeast", 8, 0.08), City("beijing", 39.9, 116.4, 21.8, "ap-northeast", 8, 0.08),
    City("shenzhen", 22.5, 114.1, 17.6, "ap-northeast", 8, 0.08), City("taipei", 25.0, 121.5, 7.0, "ap-northeast", 8, 0.10),
)
CITY_INDEX = {c.name: i for i, c in enumerate(CITIES)}
LAT = np.radians([c.lat for c in CITIES])
LON = np.radians([c.lon for c in CITIES])
POP = np.array([c.pop_m for c in CITIES])
UTC = np.array([c.utc for c in CITIES])
KWH = np.array([c.kwh_usd for c in CITIES])
CITY_REGION = np.array([REGIONS.index(c.region) for c in CITIES])

EARTH_KM = 6371.0
FIBRE_KM_S = 200_000.0 * 0.6  # light in fibre, times how straight real paths are
ROUTING_S = 0.005


def distance_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance (haversine), radians in, km out; broadcasts."""
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def city_rtt_s() -> np.ndarray:
    """RTT between every pair of cities, seconds: shape (cities, cities)."""
    d = distance_km(LAT[:, None], LON[:, None], LAT[None, :], LON[None, :])
    return 2 * d / FIBRE_KM_S + ROUTING_S


def city(name: str) -> int:
    try:
        return CITY_INDEX[name]
    except KeyError:
        raise ValueError(f"unknown city {name!r} (known: {', '.join(CITY_INDEX)})") from None
