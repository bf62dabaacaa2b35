"""Units across the standards: livetwin's short symbols, DTDL semantic types and unit names
(the QuantitativeTypes extension), and UN/CEFACT common codes (NGSI-LD `unitCode`)."""

from __future__ import annotations

from typing import NamedTuple


class Unit(NamedTuple):
    symbol: str  # what livetwin types write: degC, bar, m3/h
    semantic_type: str  # the DTDL semantic type that carries it
    dtdl: str  # the DTDL unit name
    cefact: str  # the UN/CEFACT common code


UNITS = (
    Unit("degC", "Temperature", "degreeCelsius", "CEL"),
    Unit("degF", "Temperature", "degreeFahrenheit", "FAH"),
    Unit("K", "Temperature", "kelvin", "KEL"),
    Unit("Pa", "Pressure", "pascal", "PAL"),
    Unit("hPa", "Pressure", "hectopascal", "A97"),
    Unit("kPa", "Pressure", "kilopascal", "KPA"),
    Unit("mbar", "Pressure", "millibar", "MBR"),
    Unit("bar", "Pressure", "bar", "BAR"),
    Unit("psi", "Pressure", "poundPerSquareInch", "PS"),
    Unit("W", "Power", "watt", "WTT"),
    Unit("kW", "Power", "kilowatt", "KWT"),
    Unit("MW", "Power", "megawatt", "MAW"),
    Unit("J", "Energy", "joule", "JOU"),
    Unit("kJ", "Energy", "kilojoule", "KJO"),
    Unit("Wh", "Energy", "wattHour", "WHR"),
    Unit("kWh", "Energy", "kilowattHour", "KWH"),
    Unit("MWh", "Energy", "megawattHour", "MWH"),
    Unit("A", "Current", "ampere", "AMP"),
    Unit("mA", "Current", "milliampere", "4K"),
    Unit("V", "Voltage", "volt", "VLT"),
    Unit("kV", "Voltage", "kilovolt", "KVT"),
    Unit("ohm", "Resistance", "ohm", "OHM"),
    Unit("Hz", "Frequency", "hertz", "HTZ"),
    Unit("rad/s", "AngularVelocity", "radianPerSecond", "2A"),
    Unit("rpm", "AngularVelocity", "revolutionPerMinute", "RPM"),
    Unit("rad", "Angle", "radian", "C81"),
    Unit("deg", "Angle", "degreeOfArc", "DD"),
    Unit("m", "Length", "metre", "MTR"),
    Unit("mm", "Length", "millimetre", "MMT"),
    Unit("cm", "Length", "centimetre", "CMT"),
    Unit("km", "Length", "kilometre", "KMT"),
    Unit("m2", "Area", "squareMetre", "MTK"),
    Unit("m3", "Volume", "cubicMetre", "MTQ"),
    Unit("l", "Volume", "litre", "LTR"),
    Unit("m/s", "Velocity", "metrePerSecond", "MTS"),
    Unit("km/h", "Velocity", "kilometrePerHour", "KMH"),
    Unit("m/s2", "Acceleration", "metrePerSecondSquared", "MSK"),
    Unit("m3/h", "VolumeFlowRate", "cubicMetrePerHour", "MQH"),
    Unit("m3/s", "VolumeFlowRate", "cubicMetrePerSecond", "MQS"),
    Unit("l/min", "VolumeFlowRate", "litrePerMinute", "L2"),
    Unit("l/s", "VolumeFlowRate", "litrePerSecond", "G51"),
    Unit("kg/s", "MassFlowRate", "kilogramPerSecond", "KGS"),
    Unit("kg/h", "MassFlowRate", "kilogramPerHour", "E93"),
    Unit("g", "Mass", "gram", "GRM"),
    Unit("kg", "Mass", "kilogram", "KGM"),
    Unit("t", "Mass", "tonne", "TNE"),
    Unit("N", "Force", "newton", "NEW"),
    Unit("Nm", "Torque", "newtonMetre", "NU"),
    Unit("s", "TimeSpan", "second", "SEC"),
    Unit("ms", "TimeSpan", "millisecond", "C26"),
    Unit("min", "TimeSpan", "minute", "MIN"),
    Unit("h", "TimeSpan", "hour", "HUR"),
    Unit("d", "TimeSpan", "day", "DAY"),
    Unit("lx", "Illuminance", "lux", "LUX"),
    Unit("ppm", "Concentration", "partsPerMillion", "59"),
    Unit("ppb", "Concentration", "partsPerBillion", "61"),
    Unit("%", "RelativeHumidity", "percent", "P1"),
    Unit("kg/m3", "Density", "kilogramPerCubicMetre", "KMQ"),
    Unit("W/m2", "Irradiance", "wattPerSquareMetre", "D54"),
    Unit("dB", "SoundPressure", "decibel", "2N"),
)

BY_SYMBOL = {u.symbol: u for u in UNITS}
BY_DTDL = {u.dtdl: u for u in UNITS}


def from_dtdl(name: str) -> str:
    """livetwin's symbol for a DTDL unit name (the name itself when the table lacks it)."""
    found = BY_DTDL.get(name)
    return found.symbol if found else name


def to_dtdl(symbol: str, semantic_type: str = "") -> tuple[str, str] | None:
    """(semantic type, DTDL unit) for a livetwin unit, or None when DTDL has no such unit.

    `semantic_type` (kept from an import) wins over the table's choice for the unit."""
    found = BY_SYMBOL.get(symbol) or BY_DTDL.get(symbol)
    if found is None:  # a DTDL unit the table lacks, kept by name with its semantic type
        return (semantic_type, symbol) if semantic_type else None
    return semantic_type or found.semantic_type, found.dtdl


def cefact(symbol: str) -> str | None:
    """The UN/CEFACT common code of a livetwin unit, or None when the table lacks it."""
    found = BY_SYMBOL.get(symbol)
    return found.cefact if found else None
