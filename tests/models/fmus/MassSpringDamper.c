/* Test FMU (FMI 2.0, model exchange AND co-simulation, C), shaped like a Modelica export:
 * a mass on a spring and a damper, pushed by a force F, with the dotted names a Modelica tool
 * writes (mass.m, spring.c, damper.d, mass.s, mass.v):
 *     mass.m * der(mass.v) = F - spring.c * mass.s - damper.d * mass.v,  der(mass.s) = mass.v
 * Output y = mass.s. Its co-simulation doStep is ONE explicit Euler step, as some exporters'
 * default co-simulation is: from rest, y does not move in a step, whatever the parameters.
 * The states can be set before initialisation (start values, initial="exact") and, in model
 * exchange, through fmi2SetContinuousStates. Built by tests/models/test_fmu.py with gcc.
 * Value references: 0 mass.m, 1 spring.c, 2 damper.d, 3 F, 4 mass.s, 5 mass.v,
 * 6 der(mass.s), 7 der(mass.v), 8 y. */
#include <stdlib.h>
#include "fmi2Functions.h"

enum { M, C, D, F, S, V, DER_S, DER_V, Y, NVARS };
static const double START[NVARS] = {1.0, 4.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0};

typedef struct { double v[NVARS]; double time; } Instance;

static void defaults(Instance *m) {
    for (int i = 0; i < NVARS; i++) m->v[i] = START[i];
    m->time = 0.0;
}

static fmi2Status derivatives(Instance *m) {
    if (!(m->v[M] > 0.0)) return fmi2Error;
    m->v[DER_S] = m->v[V];
    m->v[DER_V] = (m->v[F] - m->v[C] * m->v[S] - m->v[D] * m->v[V]) / m->v[M];
    m->v[Y] = m->v[S];
    return fmi2OK;
}

const char *fmi2GetTypesPlatform(void) { return fmi2TypesPlatform; }
const char *fmi2GetVersion(void) { return fmi2Version; }
fmi2Status fmi2SetDebugLogging(fmi2Component c, fmi2Boolean on, size_t n, const fmi2String cat[]) {
    return fmi2OK;
}

fmi2Component fmi2Instantiate(fmi2String name, fmi2Type type, fmi2String guid,
                              fmi2String resources, const fmi2CallbackFunctions *functions,
                              fmi2Boolean visible, fmi2Boolean logging) {
    Instance *m = calloc(1, sizeof(Instance));
    if (m) defaults(m);
    return m;
}

void fmi2FreeInstance(fmi2Component c) { free(c); }
fmi2Status fmi2SetupExperiment(fmi2Component c, fmi2Boolean tol_defined, fmi2Real tol,
                               fmi2Real start, fmi2Boolean stop_defined, fmi2Real stop) {
    ((Instance *)c)->time = start;
    return fmi2OK;
}
fmi2Status fmi2EnterInitializationMode(fmi2Component c) { return fmi2OK; }
fmi2Status fmi2ExitInitializationMode(fmi2Component c) { return derivatives(c); }
fmi2Status fmi2Terminate(fmi2Component c) { return fmi2OK; }
fmi2Status fmi2Reset(fmi2Component c) {
    defaults(c);
    return fmi2OK;
}

fmi2Status fmi2GetReal(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Real value[]) {
    Instance *m = c;
    if (derivatives(m) != fmi2OK) return fmi2Error;
    for (size_t i = 0; i < n; i++) {
        if (vr[i] >= NVARS) return fmi2Error;
        value[i] = m->v[vr[i]];
    }
    return fmi2OK;
}
fmi2Status fmi2SetReal(fmi2Component c, const fmi2ValueReference vr[], size_t n,
                       const fmi2Real value[]) {
    Instance *m = c;
    for (size_t i = 0; i < n; i++) {
        if (vr[i] > V) return fmi2Error; /* parameters, the input and the states' start values */
        m->v[vr[i]] = value[i];
    }
    return fmi2OK;
}

/* Co-simulation: one explicit Euler step per doStep. */
fmi2Status fmi2DoStep(fmi2Component c, fmi2Real t, fmi2Real h, fmi2Boolean no_set_prior) {
    Instance *m = c;
    if (derivatives(m) != fmi2OK) return fmi2Error;
    double ds = m->v[DER_S], dv = m->v[DER_V];
    m->v[S] += h * ds;
    m->v[V] += h * dv;
    m->time = t + h;
    return derivatives(m);
}

/* Unused parts of the interface: they exist because FMPy binds every FMI 2.0 function. */
#define UNSUPPORTED(sig) fmi2Status sig { return fmi2Error; }
UNSUPPORTED(fmi2GetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Integer v[]))
UNSUPPORTED(fmi2GetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Boolean v[]))
UNSUPPORTED(fmi2GetString(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2String v[]))
UNSUPPORTED(fmi2SetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Integer v[]))
UNSUPPORTED(fmi2SetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Boolean v[]))
UNSUPPORTED(fmi2SetString(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2String v[]))
UNSUPPORTED(fmi2GetFMUstate(fmi2Component c, fmi2FMUstate *s))
UNSUPPORTED(fmi2SetFMUstate(fmi2Component c, fmi2FMUstate s))
UNSUPPORTED(fmi2FreeFMUstate(fmi2Component c, fmi2FMUstate *s))
UNSUPPORTED(fmi2SerializedFMUstateSize(fmi2Component c, fmi2FMUstate s, size_t *size))
UNSUPPORTED(fmi2SerializeFMUstate(fmi2Component c, fmi2FMUstate s, fmi2Byte b[], size_t size))
UNSUPPORTED(fmi2DeSerializeFMUstate(fmi2Component c, const fmi2Byte b[], size_t size, fmi2FMUstate *s))
UNSUPPORTED(fmi2GetDirectionalDerivative(fmi2Component c, const fmi2ValueReference u[], size_t nu,
    const fmi2ValueReference k[], size_t nk, const fmi2Real dk[], fmi2Real du[]))
UNSUPPORTED(fmi2SetRealInputDerivatives(fmi2Component c, const fmi2ValueReference vr[], size_t n,
    const fmi2Integer order[], const fmi2Real value[]))
UNSUPPORTED(fmi2GetRealOutputDerivatives(fmi2Component c, const fmi2ValueReference vr[], size_t n,
    const fmi2Integer order[], fmi2Real value[]))
UNSUPPORTED(fmi2CancelStep(fmi2Component c))
UNSUPPORTED(fmi2GetStatus(fmi2Component c, const fmi2StatusKind s, fmi2Status *value))
UNSUPPORTED(fmi2GetRealStatus(fmi2Component c, const fmi2StatusKind s, fmi2Real *value))
UNSUPPORTED(fmi2GetIntegerStatus(fmi2Component c, const fmi2StatusKind s, fmi2Integer *value))
UNSUPPORTED(fmi2GetBooleanStatus(fmi2Component c, const fmi2StatusKind s, fmi2Boolean *value))
UNSUPPORTED(fmi2GetStringStatus(fmi2Component c, const fmi2StatusKind s, fmi2String *value))

/* Model exchange. */
fmi2Status fmi2EnterEventMode(fmi2Component c) { return fmi2OK; }
fmi2Status fmi2NewDiscreteStates(fmi2Component c, fmi2EventInfo *info) {
    info->newDiscreteStatesNeeded = fmi2False;
    info->terminateSimulation = fmi2False;
    info->nominalsOfContinuousStatesChanged = fmi2False;
    info->valuesOfContinuousStatesChanged = fmi2False;
    info->nextEventTimeDefined = fmi2False;
    info->nextEventTime = 0.0;
    return fmi2OK;
}
fmi2Status fmi2EnterContinuousTimeMode(fmi2Component c) { return fmi2OK; }
fmi2Status fmi2CompletedIntegratorStep(fmi2Component c, fmi2Boolean no_set_prior,
                                       fmi2Boolean *enter_event, fmi2Boolean *terminate) {
    *enter_event = fmi2False;
    *terminate = fmi2False;
    return fmi2OK;
}
fmi2Status fmi2SetTime(fmi2Component c, fmi2Real t) {
    ((Instance *)c)->time = t;
    return fmi2OK;
}
fmi2Status fmi2SetContinuousStates(fmi2Component c, const fmi2Real x[], size_t nx) {
    Instance *m = c;
    if (nx != 2) return fmi2Error;
    m->v[S] = x[0];
    m->v[V] = x[1];
    return fmi2OK;
}
fmi2Status fmi2GetDerivatives(fmi2Component c, fmi2Real dx[], size_t nx) {
    Instance *m = c;
    if (nx != 2 || derivatives(m) != fmi2OK) return fmi2Error;
    dx[0] = m->v[DER_S];
    dx[1] = m->v[DER_V];
    return fmi2OK;
}
fmi2Status fmi2GetEventIndicators(fmi2Component c, fmi2Real z[], size_t nz) { return fmi2OK; }
fmi2Status fmi2GetContinuousStates(fmi2Component c, fmi2Real x[], size_t nx) {
    Instance *m = c;
    if (nx != 2) return fmi2Error;
    x[0] = m->v[S];
    x[1] = m->v[V];
    return fmi2OK;
}
fmi2Status fmi2GetNominalsOfContinuousStates(fmi2Component c, fmi2Real x[], size_t nx) {
    for (size_t i = 0; i < nx; i++) x[i] = 1.0;
    return fmi2OK;
}
